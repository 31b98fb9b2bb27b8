"""A dedicated job's instances in the projection (pure): merged from ``cluster.provisioning``,
``cluster.provisioned``, ``cluster.instance_lost`` and ``cluster.instance_replaced``, per instance
the greatest mark winning, so any order gives the same list."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from schemas import events as ev
from schemas import subjects as s
from schemas.replies import InstanceRecord

_LAUNCH_RANK = {s.CLUSTER_PROVISIONING: 0, s.CLUSTER_PROVISIONED: 1}
_REPLACEMENT_RANK = 2
"""A replacement instance's mark supersedes what provisioning said of the same id."""


class InstanceMark(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    instance_id: str
    instance_type: str
    replica: int
    state: str
    private_ip: str | None = None
    rank: int = 0
    """0 from ``cluster.provisioning``, 1 from ``cluster.provisioned`` (which supersedes), 2 from
    ``cluster.instance_replaced`` (the new instance)."""

    def key(self) -> tuple[int, bool, str, str]:
        return (self.rank, self.private_ip is not None, self.state, self.private_ip or "")


def _merged(instances: dict[str, InstanceMark], marks: Iterable[InstanceMark]) -> dict[str, InstanceMark]:
    """``instances`` with ``marks`` merged in (per instance the greatest key wins), sorted by id."""
    merged = dict(instances)
    for cand in marks:
        cur = merged.get(cand.instance_id)
        if cur is None or cand.key() > cur.key():
            merged[cand.instance_id] = cand
    return dict(sorted(merged.items()))


def launched(
    instances: dict[str, InstanceMark], event: ev.ClusterProvisioning | ev.ClusterProvisioned, kind: str
) -> dict[str, InstanceMark]:
    rank = _LAUNCH_RANK[kind]
    return _merged(
        instances,
        (
            InstanceMark(
                instance_id=i.instance_id,
                instance_type=i.instance_type,
                replica=i.replica,
                state=i.state,
                private_ip=i.private_ip,
                rank=rank,
            )
            for i in event.instances
        ),
    )


def replaced(instances: dict[str, InstanceMark], event: ev.ClusterInstanceReplaced) -> dict[str, InstanceMark]:
    """With the new instance that runs the replica now (the old one is listed ``replaced``)."""
    new = InstanceMark(
        instance_id=event.new_instance_id,
        instance_type=event.instance_type or "",
        replica=event.replica,
        state="running",
        private_ip=event.private_ip,
        rank=_REPLACEMENT_RANK,
    )
    return _merged(instances, (new,))


def lost(found: dict[str, str], event: ev.ClusterInstanceLost) -> dict[str, str]:
    """With what EC2 said of a lost instance (``stopped``, ``terminated``, ``missing``); of two
    claims on one instance (there is one per instance) the smaller state, for any order."""
    old = found.get(event.instance_id)
    if old is not None and old <= event.state:
        return found
    return dict(sorted({**found, event.instance_id: event.state}.items()))


def listed(seen: dict[str, int], event: ev.ClusterProvisioned) -> dict[str, int]:
    """Instance id -> the highest revision whose ``cluster.provisioned`` lists it (the first
    launch's has no revision: 1), merged by maximum, so any order gives the same map."""
    revision = event.revision or 1
    out = dict(seen)
    for i in event.instances:
        out[i.instance_id] = max(out.get(i.instance_id, 0), revision)
    return dict(sorted(out.items()))


def removed(seen: dict[str, int]) -> set[str]:
    """Instances a resize removed (§8.3): from revision 2 on a ``cluster.provisioned`` lists the
    job's complete current set, so one listed only by an earlier revision was terminated."""
    latest = max(seen.values(), default=0)
    return {iid for iid, revision in seen.items() if latest >= 2 and revision < latest}


def records(
    instances: dict[str, InstanceMark],
    torn_down: list[str],
    replaced: list[str],
    lost_states: dict[str, str],
    *,
    torn_all: bool,
    resized_away: set[str] | None = None,
) -> list[InstanceRecord]:
    """The job record's ``instances``, by replica: ``terminated`` once torn down or removed by a
    resize, ``replaced`` once another instance runs its replica, else what EC2 said of it when it
    was found lost."""
    torn, gone = set(torn_down) | (resized_away or set()), set(replaced)

    def state(i: InstanceMark) -> str:
        if torn_all or i.instance_id in torn:
            return "terminated"
        return "replaced" if i.instance_id in gone else lost_states.get(i.instance_id, i.state)

    return [
        InstanceRecord(
            instance_id=i.instance_id,
            instance_type=i.instance_type,
            replica=i.replica,
            state=state(i),
            private_ip=i.private_ip,
        )
        for i in sorted(instances.values(), key=lambda i: (i.replica, i.instance_id))
    ]


__all__ = ["InstanceMark", "launched", "listed", "lost", "records", "removed", "replaced"]
