"""Pure healing logic (§8.2): which instances of running dedicated jobs must be replaced, and how
a replacement is launched. No I/O; ``services/provisioner/healer.py`` feeds it what EC2 and the
``JOB_LIFECYCLE`` records say and acts on what it returns.

A job is *running dedicated* while teardown's record says so (dedicated, provisioned, no end
recorded). Each replica's *current* instance is the one reported for it (``cluster.provisioned``,
``cluster.instance_replaced``) and not replaced since. A replica whose current instance is not
``pending``/``running`` (stopped, stopping, shutting down, terminated, or no longer listed by EC2)
and which has no other live instance (a replacement launched but not recorded yet) is lost,
unless a shrink removed it (its number is at or above the latest revision's count, §8.3). A job
whose resize is still being applied is left to the resize.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from schemas.lifecycle import JobLifecycle
from services.cloud.instances import DEAD_STATES, InstanceInfo

ALIVE = frozenset({"pending", "running"})
"""States of an instance that runs (or is about to): anything else of a running job is lost."""
MISSING = "missing"
"""The state of a lost instance EC2 no longer lists (terminated more than about an hour ago)."""


def running_dedicated(rec: JobLifecycle) -> bool:
    """Whether the record is of a dedicated job whose cluster runs and whose end is not recorded
    (a cancel teardown has seen counts as an end: such a job never gets a replacement)."""
    return rec.cluster == "dedicated" and rec.started_at is not None and rec.end is None and not rec.released


def resizing(rec: JobLifecycle) -> bool:
    """Whether a resize is still being applied (a revision newer than the last provisioned one):
    the resize itself launches and terminates what it needs, so the job is not healed meanwhile.
    Without this, a replica removed by a shrink and added back by a grow would look lost (its
    current instance is the one the shrink terminated) and be healed before the grow launched it."""
    return rec.provisioned_revision > 0 and rec.revision > rec.provisioned_revision


def removed(rec: JobLifecycle, replica: int) -> bool:
    """Whether a shrink removed ``replica`` (§8.3: the latest revision wants fewer): its
    instance was terminated on purpose and must not be healed."""
    return rec.wanted is not None and replica >= rec.wanted


@dataclass(frozen=True, slots=True)
class LostInstance:
    """An instance of a running dedicated job that must be replaced."""

    job_id: str
    replica: int
    instance_id: str
    state: str
    instance_type: str | None = None


def current_instances(rec: JobLifecycle, seen: dict[str, InstanceInfo]) -> dict[int, list[str]]:
    """Each replica's instances reported and not replaced (several only after a double report).
    An instance recorded without its replica (records written before replicas were kept) takes
    the replica of its tag, when EC2 still lists it."""
    replica_of = dict(rec.replicas)
    for iid in rec.instance_ids:
        info = seen.get(iid)
        if iid not in replica_of and info is not None and info.replica is not None:
            replica_of[iid] = info.replica
    out: dict[int, list[str]] = {}
    for iid, replica in sorted(replica_of.items()):
        if iid not in rec.replaced:
            out.setdefault(replica, []).append(iid)
    return out


def _latest(ids: Sequence[str], seen: dict[str, InstanceInfo]) -> str:
    """The most recently launched of a replica's instances (those EC2 no longer lists first, then by id)."""

    def key(iid: str) -> tuple[bool, datetime, str]:
        info = seen.get(iid)
        launched = info.launch_time if info is not None else None
        return launched is not None, launched or datetime.min, iid

    return max(ids, key=key)


def lost_instances(records: Iterable[JobLifecycle], described: Iterable[InstanceInfo]) -> list[LostInstance]:
    """The instances to replace, at most one per replica, given the records of the jobs and every
    project-tagged instance EC2 lists (all states: one ``DescribeInstances`` for the whole fleet)."""
    by_job: dict[str, dict[str, InstanceInfo]] = {}
    for i in described:
        if i.job_id:
            by_job.setdefault(i.job_id, {})[i.instance_id] = i
    out: list[LostInstance] = []
    for rec in sorted(records, key=lambda r: r.job_id):
        if not running_dedicated(rec) or resizing(rec):
            continue
        seen = by_job.get(rec.job_id, {})
        alive = {i.replica for i in seen.values() if i.state in ALIVE and i.replica is not None}
        for replica, ids in sorted(current_instances(rec, seen).items()):
            if replica in alive or removed(rec, replica):
                continue
            iid = _latest(ids, seen)
            info = seen.get(iid)
            out.append(
                LostInstance(
                    job_id=rec.job_id,
                    replica=replica,
                    instance_id=iid,
                    state=info.state if info is not None else MISSING,
                    instance_type=info.instance_type if info is not None and info.instance_type else None,
                )
            )
    return out


def replacement_types(old_type: str | None, ranked: Sequence[str]) -> list[str]:
    """The fallback order of a replacement: the lost instance's type, then the job's ranked types."""
    return list(dict.fromkeys(t for t in [old_type, *ranked] if t))


def replacement_token(job_id: str, replica: int, old_instance_id: str, instance_type: str, attempt: int) -> str:
    """``ClientToken`` of a replacement's launch (honoured by real EC2): the same for a retry of the
    same attempt, new once an earlier replacement died before running (``attempt`` counts those)."""
    raw = f"{job_id}/{replica}/replaces/{old_instance_id}/{instance_type}/{attempt}"
    return hashlib.sha256(raw.encode()).hexdigest()[:64]


@dataclass(slots=True)
class ReplacementPlan:
    keep: InstanceInfo | None = None
    """A live replacement launched by an earlier attempt (found by its ``replaces`` tag): adopt it."""
    extra: list[InstanceInfo] = field(default_factory=list)
    """Other replacements still existing (surplus or died before running): terminate them."""
    attempts: int = 0
    """How many replacements were launched before (for the next launch's client token)."""


def plan_replacement(found: Iterable[InstanceInfo]) -> ReplacementPlan:
    """Reconcile the replacements of one lost instance that EC2 lists (any state)."""
    ordered = sorted(found, key=lambda i: (i.launch_time is None, i.launch_time or datetime.min, i.instance_id))
    plan = ReplacementPlan(attempts=len(ordered))
    for inst in ordered:
        if plan.keep is None and inst.state in ALIVE:
            plan.keep = inst
        elif inst.state not in DEAD_STATES:
            plan.extra.append(inst)
    return plan


__all__ = [
    "ALIVE",
    "MISSING",
    "LostInstance",
    "ReplacementPlan",
    "current_instances",
    "lost_instances",
    "plan_replacement",
    "removed",
    "replacement_token",
    "replacement_types",
    "resizing",
    "running_dedicated",
]
