"""Builders for placement's unit tests: a World of idle nodes, stored decisions, and applying
what the ledger would store, at the fixed instant ``NOW`` with node TTL ``TTL``."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Constraints, Resources
from services.placement.state import World
from tests.support.events import decided, free_node

NOW = 1000.0
TTL = 15.0
RES = Resources(cpu=2.0, memory_mb=512)
"""Each replica's resources in :func:`decision`."""


def fleet(**cpus: float) -> World:
    """A World of idle docker nodes, ``name=cpu`` each, reported at ``NOW``."""
    w = World()
    for nid, cpu in sorted(cpus.items()):
        w.update_node(free_node(nid, cpu), NOW)
    return w


def decision(
    job_id: str,
    nodes: dict[int, str],
    *,
    revision: int = 1,
    replicas: int | None = None,
    strategy: str = "best_fit",
    spread: bool = False,
    changes: list[ev.Change] | None = None,
) -> ev.PlacementDecided:
    """Revision ``revision`` of a shared docker job of ``RES`` per replica, replica r on ``nodes[r]``."""
    return msgspec.structs.replace(
        decided(job_id),
        event_id=ev.revision_event_id(job_id, s.PLACEMENT_DECIDED, revision),
        strategy=strategy,
        assignments=[ev.Assignment(replica=r, node_id=n) for r, n in sorted(nodes.items())],
        resources=RES,
        revision=revision,
        replicas=replicas if replicas is not None else len(nodes),
        constraints=Constraints(spread=spread),
        changes=changes or [],
    )


def apply(w: World, out: list[ev.PlacementDecided | ev.PlacementDegraded]) -> None:
    """Apply stored revisions to ``w`` as the ledger would."""
    for e in out:
        if isinstance(e, ev.PlacementDecided):
            w.apply_decided(e)
        else:
            w.note_degraded(e.job_id, e.revision)


def assert_booked_as_reserved(w: World, nodes: Iterable[str]) -> None:
    """Each of ``nodes`` has booked exactly the cpu of the live reservations' replicas on it, never more
    than it has; no released job holds a reservation, and a spread job is never twice on one node."""
    expected = dict.fromkeys(nodes, 0.0)
    for res in w.reservations.values():
        assert res.job_id not in w.released
        for nid in res.node_ids:
            expected[nid] += res.resources.cpu
    for nid, cpu in expected.items():
        node = w.nodes[nid]
        assert node.reserved_cpu == cpu
        assert node.reserved_cpu <= node.status.cpu_cores
    for res in w.reservations.values():
        d = res.decision
        assert d is not None
        if d.constraints is not None and d.constraints.spread:
            assert len(set(res.node_ids)) == len(res.node_ids)
