"""A pending job's first decision (revision 1), on the local ledger: where it goes, booked, or
why it fits nowhere, or nothing yet (it waits for capacity until its deadline).

A shared job that fits nowhere may preempt (:mod:`services.placement.preempt`, §8.3): then the
victims' revisions come first in the list, so the stream never holds the preemptor's booking
before the room it takes is freed. A failure after preemption was considered says why it did
not help.
"""

from __future__ import annotations

import structlog

from schemas import events as ev
from schemas import subjects as s
from services.placement import preempt
from services.placement.engine import NotPlaced, Placed, place, place_dedicated
from services.placement.state import World
from services.runtime.config import InstanceType

__all__ = ["Stored", "failed", "first_decision", "too_late"]

log = structlog.get_logger()

Stored = ev.PlacementDecided | ev.PlacementFailed | ev.PlacementDegraded
"""What the decider stores on PLACEMENTS."""


def first_decision(
    e: ev.JobAccepted,
    world: World,
    now: float,
    *,
    ttl: float,
    top: int,
    instance_types: list[InstanceType],
    preemption: bool,
    final: bool,
    busy: set[str],
) -> list[Stored] | None:
    """What to store for ``e``'s job, booked on ``world`` when placed (the victims' revisions first);
    None while it should wait. ``final``: the last try, failing with a full explanation. ``busy``:
    jobs revised in this chain already (never victims: one revision per job and chain)."""
    spec = e.spec
    room: preempt.Room | None = None
    why: str | None = None
    result: Placed | NotPlaced
    if spec.cluster == "dedicated":
        result = place_dedicated(spec, instance_types, top)
    else:
        tried = preempt.attempt(
            spec, e.job_id, world, now, ttl, top, enabled=preemption, explain_failure=final, busy=busy
        )
        result, room, why = tried.result, tried.room, tried.why
        if final and not isinstance(result, Placed):  # the explanation, with why preempting did not help
            result = place(spec, world, now, ttl, top, explain_failure=True)
    if isinstance(result, Placed):
        out = _decided(e, result, room)
        if spec.cluster == "shared":
            world.decide_locally(out)  # the next decision of the batch sees it
        if room is None:
            return [out]
        victims = preempt.replace_victims(room, world, now, ttl, top)
        log.info("preempting", job_id=e.job_id, victims=len(room.victims), jobs=len(room.before))
        return [*victims, out]
    if final or spec.cluster == "dedicated":
        assert isinstance(result, NotPlaced)
        reason = result.reason if why is None or spec.priority <= 0 else f"{result.reason}; {why}"
        return [failed(e, reason, result.nodes_total, result.excluded)]
    return None


def too_late(e: ev.JobAccepted) -> ev.PlacementFailed:
    """The failure of a job that ended (was released) before it was placed."""
    return ev.PlacementFailed(
        event_id=ev.event_id_for(e.job_id, s.PLACEMENT_FAILED),
        job_id=e.job_id,
        reason="job ended before it was placed",
        tenant=e.tenant,
    )


def _decided(e: ev.JobAccepted, placed: Placed, room: preempt.Room | None) -> ev.PlacementDecided:
    job_id, spec = e.job_id, e.spec
    return ev.PlacementDecided(
        event_id=ev.event_id_for(job_id, s.PLACEMENT_DECIDED),
        job_id=job_id,
        cluster=spec.cluster,
        technology=spec.technology,
        strategy=spec.strategy,
        assignments=placed.assignments,
        candidates=placed.candidates,
        resources=spec.resources,
        max_runtime_s=spec.max_runtime_s,
        revision=1,
        replicas=spec.replicas,
        constraints=spec.constraints,
        priority=spec.priority,
        preempted=room.preempted() if room is not None else [],
        tenant=e.tenant,
    )


def failed(e: ev.JobAccepted, reason: str, nodes_total: int, excluded: ev.Excluded) -> ev.PlacementFailed:
    """``e``'s job fits nowhere (or waited at a quota) until its deadline: why, with the census."""
    return ev.PlacementFailed(
        event_id=ev.event_id_for(e.job_id, s.PLACEMENT_FAILED),
        job_id=e.job_id,
        reason=reason,
        nodes_total=nodes_total,
        excluded=excluded,
        tenant=e.tenant,
    )
