"""Re-placement of a running shared job's replicas (§8.1-8.2): pure, over the world and the
job's latest decision.

A replica must move when its node is leaving (lost: silent for ``node_lost_s`` or
reporting ``down``; draining: drained by ``node.drain`` or reporting ``draining``); a
replica is missing when the latest revision left it out (it fit nowhere). Both are placed
again with the job's own strategy and constraints, counting the replicas that stay
(:func:`services.placement.engine.place` with ``kept``), as many as fit. The result is the
next revision's complete assignments and its changes, and for the replicas that fit
nowhere the explanation (``placement.failed``'s format), or None when nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Constraints, JobSpec, Workload
from services.placement.engine import NotPlaced, Placed, place, shortfall
from services.placement.state import Reservation, World

MISSING_REASON: ev.ChangeReason = "node_lost"
"""The reason of a missing replica placed again when its revisions do not say why it went
missing (events written before revisions): it had lost its node."""


@dataclass(frozen=True, slots=True)
class Replan:
    assignments: list[ev.Assignment]
    """The complete assignments of the next revision (unchanged when ``changes`` is empty)."""
    changes: list[ev.Change]
    candidates: list[ev.Candidate]
    missing: list[int]
    """Replicas that fit nowhere after this revision."""
    failure: NotPlaced | None
    """Why ``missing`` fit nowhere (a full census), when a ``placement.degraded`` is due."""
    wanted: int
    """The number of replicas the job wants from this revision on."""
    resized: bool = False
    """``wanted`` differs from the previous revision's (a ``job.scale``): a revision is due even
    when no replica changed node (growth that fits nowhere)."""


def spec_of(d: ev.PlacementDecided, replicas: int) -> JobSpec:
    """The JobSpec that places ``replicas`` more replicas of the job of decision ``d``."""
    assert d.resources is not None
    return JobSpec(
        name=d.job_id,
        technology=d.technology,
        replicas=replicas,
        resources=d.resources,
        constraints=d.constraints if d.constraints is not None else Constraints(),
        cluster="shared",
        workload=Workload(),
        strategy=d.strategy,  # type: ignore[arg-type]  # a strategy the engine knows (it decided it)
        max_runtime_s=d.max_runtime_s if isinstance(d.max_runtime_s, int) else None,
        priority=d.priority,
    )


def replan(
    res: Reservation,
    world: World,
    now: float,
    ttl: float,
    top_n: int = 10,
    *,
    wanted: int | None = None,
    evicted: dict[int, str] | None = None,
    cap: tuple[int, str] | None = None,
) -> Replan | None:
    """The next revision of ``res``'s job, or None when none is due: no replica is on a leaving
    node, the missing ones still fit nowhere (and their degraded event is already known), and
    the job keeps its number of replicas.

    ``wanted`` (``job.scale``): the job's new number of replicas. Shrinking removes the replicas
    numbered ``wanted`` and up (``to: null``, reason ``scale``); growing places the new ones
    with the job's strategy and constraints (reason ``scale``) together with any that must move
    or are missing, so one revision says everything that changed in this pass.

    ``evicted`` (a preemption): replicas whose room another job took, by that job's id; they
    move like lost ones, reason ``preempted`` with ``by``.

    ``cap`` (the tenant's quota, §8.4): at most this many replicas placed after the revision, and
    the explanation when that leaves some missing. Replicas that must move come first: they are
    counted already (a re-placement never counts a job twice)."""
    d = res.decision
    if d is None or d.resources is None:
        return None
    old = d.wanted
    new = old if wanted is None else wanted
    current = res.assignments()
    moving: dict[int, str] = {}
    removed: dict[int, str] = {}
    for replica, nid in current.items():
        if replica >= new:
            removed[replica] = nid
            continue
        why = "preempted" if evicted and replica in evicted else world.leaving(nid)
        if why is not None:
            moving[replica] = why
    missing = [r for r in res.missing() if r < new]
    added = list(range(old, new))
    if not moving and not missing and not removed and new == old:
        return None
    after = {replica: nid for replica, nid in current.items() if replica not in moving and replica not in removed}
    kept = list(after.values())
    todo = sorted([*moving, *missing, *added])
    room = len(todo)
    if cap is not None:
        room = max(0, min(room, cap[0] - len(kept)))
        todo.sort(key=lambda r: (r not in moving, r))
    spec = spec_of(d, len(todo))
    placed: list[ev.Assignment] = []
    candidates: list[ev.Candidate] = []
    if room:
        tried = spec if room == len(todo) else spec_of(d, room)
        result = place(tried, world, now, ttl, top_n, explain_failure=False, kept=kept, partial=True)
        assert isinstance(result, Placed)
        placed, candidates = result.assignments, result.candidates
    changes = [ev.Change(replica=r, from_=nid, to=None, reason="scale") for r, nid in sorted(removed.items())]
    for i, replica in enumerate(todo):
        to = placed[i].node_id if i < len(placed) else None
        was = current.get(replica)
        if was is None and to is None:
            continue  # still missing (or added and fitting nowhere): no change of node
        why = moving.get(replica) or ("scale" if replica >= old else res.missing_reasons.get(replica, MISSING_REASON))
        by = evicted.get(replica) if evicted and why == "preempted" else None
        changes.append(ev.Change(replica=replica, from_=was, to=to, reason=why, by=by))  # type: ignore[arg-type]
        if to is not None:
            after[replica] = to
    changes.sort(key=lambda c: c.replica)
    still = todo[len(placed) :]
    resized = new != old
    degraded_known = world.degraded.get(res.job_id, 0) >= res.revision
    failure = None
    if still and (changes or resized or not degraded_known):
        if cap is not None and len(placed) == room < len(todo):  # the quota, not the fleet, stops them
            total = len(world.nodes)
            failure = NotPlaced(cap[1], total, ev.Excluded(quota=total))
        else:
            failure = shortfall(spec, world, now, ttl, len(placed))
    if not changes and not resized and failure is None:
        return None
    return Replan(
        [ev.Assignment(replica=r, node_id=n) for r, n in sorted(after.items())],
        changes,
        candidates,  # a shrink places nothing, so it ranks nothing (and the ledger's snapshot keeps no ranking)
        sorted(still),
        failure,
        new,
        resized,
    )


def next_revision(
    d: ev.PlacementDecided,
    revision: int,
    assignments: list[ev.Assignment],
    candidates: list[ev.Candidate],
    changes: list[ev.Change],
    replicas: int,
) -> ev.PlacementDecided:
    """Revision ``revision`` of the job decided by ``d``: the job's fields (cluster, technology,
    strategy, resources, limits, constraints, priority) as in ``d``, the rest given, a new ``at``."""
    return ev.PlacementDecided(
        event_id=ev.revision_event_id(d.job_id, s.PLACEMENT_DECIDED, revision),
        job_id=d.job_id,
        cluster=d.cluster,
        technology=d.technology,
        strategy=d.strategy,
        assignments=assignments,
        candidates=candidates,
        resources=d.resources,
        max_runtime_s=d.max_runtime_s,
        revision=revision,
        changes=changes,
        replicas=replicas,
        constraints=d.constraints,
        priority=d.priority,
        tenant=d.tenant,
    )


def events_of(res: Reservation, plan: Replan) -> list[ev.PlacementDecided | ev.PlacementDegraded]:
    """The events that store ``plan``: the next revision (if anything moved) and, when replicas
    fit nowhere, a ``placement.degraded`` of the job's resulting revision."""
    d = res.decision
    assert d is not None
    out: list[ev.PlacementDecided | ev.PlacementDegraded] = []
    revision = res.revision
    if plan.changes or plan.resized:
        revision += 1
        out.append(next_revision(d, revision, plan.assignments, plan.candidates, plan.changes, plan.wanted))
    if plan.failure is not None:
        out.append(
            ev.PlacementDegraded(
                event_id=ev.revision_event_id(d.job_id, s.PLACEMENT_DEGRADED, revision),
                job_id=d.job_id,
                revision=revision,
                missing=plan.missing,
                reason=plan.failure.reason,
                nodes_total=plan.failure.nodes_total,
                excluded=plan.failure.excluded,
                tenant=d.tenant,
            )
        )
    return out
