"""Preemption (§8.3): room for a job that fits nowhere, taken from replicas of shared jobs of
strictly lower priority. Pure, over the world, booking tentatively (the decider's chain stores
or undoes it all).

:func:`make_room` repeats, until the job fits: place as many replicas as fit (``partial``), then
find the node where one more replica fits by evicting the *fewest* lower-priority replicas,
ties to the set whose highest priority is lowest, then to the most recently placed, then by
node id (deterministic): the search is :func:`services.placement.victims.best_victims`.

The victims are evicted on the world as a tentative revision of their job (reason
``preempted``, ``by`` the preempting job); once the preemptor is booked, :func:`replace_victims`
places the evicted replicas again like lost ones (:func:`services.placement.moves.replan`), or
leaves them missing with a ``placement.degraded`` that says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import JobSpec
from services.placement.engine import NotPlaced, Placed, place
from services.placement.moves import events_of, replan
from services.placement.state import Reservation, World
from services.placement.victims import Victim, best_victims, victim_key


@dataclass
class Room:
    """A tentative preemption: the victims evicted (their jobs revised locally) and the jobs'
    reservations before it, to place the victims again or undo it all."""

    by: str
    victims: list[Victim] = field(default_factory=list)
    before: dict[str, Reservation] = field(default_factory=dict)

    def preempted(self) -> list[ev.Preempted]:
        return [
            ev.Preempted(job_id=v.job_id, replica=v.replica, node_id=v.node_id)
            for v in sorted(self.victims, key=victim_key)
        ]

    def undo(self, world: World) -> None:
        for job_id in self.before:
            world.undo(job_id)


def why_not(spec: JobSpec, enabled: bool) -> str | None:
    """Why ``spec`` may not preempt at all, or None when it may."""
    if spec.cluster != "shared":
        return "dedicated jobs never preempt"
    if not enabled:
        return "preemption is off ([placement] preemption = false)"
    if spec.preemption == "never":
        return "the job says preemption: never"
    if spec.priority <= 0:
        return "no job has a priority below 0"
    return None


@dataclass(frozen=True, slots=True)
class Attempt:
    """A shared job's placement, preempting when it may: placed (``room``: what it takes, if any), or
    not, with ``why`` preempting did not help."""

    result: Placed | NotPlaced
    room: Room | None = None
    why: str | None = None


def attempt(
    spec: JobSpec,
    job_id: str,
    world: World,
    now: float,
    ttl: float,
    top_n: int,
    *,
    enabled: bool,
    explain_failure: bool,
    busy: Iterable[str] = (),
) -> Attempt:
    """Place ``spec`` (:func:`~services.placement.engine.place`); when it fits nowhere and may preempt
    (:func:`why_not`, ``enabled``: the ``[placement] preemption`` setting), make room (:func:`make_room`,
    never taking from ``busy``), booking the evictions tentatively."""
    result = place(spec, world, now, ttl, top_n, explain_failure=explain_failure)
    if isinstance(result, Placed):
        return Attempt(result)
    why = why_not(spec, enabled)
    if why is None:
        got = make_room(spec, job_id, world, now, ttl, busy, top_n)
        if not isinstance(got, str):
            return Attempt(*got)
        why = got
    return Attempt(result, why=why)


def make_room(
    spec: JobSpec, job_id: str, world: World, now: float, ttl: float, busy: Iterable[str], top_n: int = 10
) -> tuple[Placed, Room] | str:
    """Evict lower-priority replicas until ``spec`` fits; returns its placement (not booked) and
    the tentative :class:`Room`, or why preemption did not help (then nothing is left changed)."""
    busy = set(busy)
    room = Room(job_id)
    for _ in range(2 * spec.replicas + 1):
        result = place(spec, world, now, ttl, top_n, explain_failure=False, partial=True)
        assert isinstance(result, Placed)
        if len(result.assignments) == spec.replicas:
            if not room.victims:
                return "it fits without preempting"
            return result, room
        found = best_victims(spec, world, now, ttl, result, busy, room.before)
        if found is None:
            room.undo(world)
            fitted = len(result.assignments)
            return (
                f"preemption considered: no node would take replica {fitted} of {spec.replicas} by "
                f"evicting replicas of shared jobs of priority below {spec.priority}"
            )
        _evict(world, room, found)
    room.undo(world)
    return "preemption considered: evictions did not make the job fit"


def _evict(world: World, room: Room, victims: list[Victim]) -> None:
    """Take ``victims`` off their nodes: each job's tentative next revision without them."""
    room.victims.extend(victims)
    for job_id in dict.fromkeys(v.job_id for v in victims):
        res = room.before.get(job_id) or world.reservations[job_id]
        room.before.setdefault(job_id, res)
        gone = {v.replica for v in room.victims if v.job_id == job_id}
        d = res.decision
        assert d is not None
        revision = res.revision + 1
        e = msgspec.structs.replace(
            d,
            event_id=ev.revision_event_id(job_id, s.PLACEMENT_DECIDED, revision),
            revision=revision,
            assignments=[
                ev.Assignment(replica=r, node_id=n) for r, n in sorted(res.assignments().items()) if r not in gone
            ],
            changes=[
                ev.Change(replica=r, from_=n, to=None, reason="preempted", by=room.by)
                for r, n in sorted(res.assignments().items())
                if r in gone
            ],
            replicas=d.wanted,
            preempted=[],
            at=ev.utcnow(),
        )
        if world.tentative(job_id):
            world.revise_locally(e)
        else:
            world.decide_locally(e)


def replace_victims(
    room: Room, world: World, now: float, ttl: float, top_n: int = 10
) -> list[ev.PlacementDecided | ev.PlacementDegraded]:
    """Once the preemptor is booked: each victim job's revision with its evicted replicas placed
    again where they fit (reason ``preempted``, ``by`` the preemptor), booked tentatively, and a
    ``placement.degraded`` for those that fit nowhere."""
    out: list[ev.PlacementDecided | ev.PlacementDegraded] = []
    for job_id, res in sorted(room.before.items()):
        evicted = {v.replica: room.by for v in room.victims if v.job_id == job_id}
        plan = replan(res, world, now, ttl, top_n, evicted=evicted)
        assert plan is not None
        for e in events_of(res, plan):
            if isinstance(e, ev.PlacementDecided):
                world.revise_locally(e)
            else:
                e = msgspec.structs.replace(e, reason=f"preempted by {room.by}: {e.reason}")
            out.append(e)
    return out
