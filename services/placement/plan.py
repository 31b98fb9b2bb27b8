"""``placement.plan``: what would be decided for a JobSpec right now, booking and storing nothing.

The body is decoded and normalised exactly as the gateway does for ``job.submit``
(:func:`schemas.jobs.decode_job_request`, the legacy body included, then
:func:`schemas.jobs.normalise` with the configured defaults), so a plan answers for the job a
submission would create. The engine runs on this instance's ledger as a decision would
(:func:`services.placement.engine.place`, :func:`~services.placement.engine.place_dedicated`),
with the full explanation when nothing fits; the world is not touched (``place`` never
reserves). A job that would preempt (§8.3) lists the replicas it would evict in
``preemptions``: the evictions are made on the world and undone before the reply (the event
loop runs nothing in between), skipping jobs the decider holds tentatively.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

import msgspec
import structlog
from nats.aio.msg import Msg

from schemas.jobs import Defaults, JobSpec, decode_job_request, normalise
from schemas.replies import PlanDecision, PlanFailure, PlanReply, Preemption
from services.placement import preempt
from services.placement.engine import NotPlaced, Placed, place_dedicated
from services.placement.ports import Clock
from services.placement.state import World
from services.runtime.config import InstanceType

__all__ = ["MAX_BODY", "Planner"]

log = structlog.get_logger()

MAX_BODY = 256 * 1024
"""The gateway's limit for a JobSpec body (a plan takes the same bodies); larger ones get 413."""

_enc = msgspec.json.Encoder()


@dataclass(slots=True)
class Planner:
    world: World
    clock: Clock
    defaults: Defaults
    instance_types: list[InstanceType]
    _: KW_ONLY
    ttl: float
    top_candidates: int
    preemption: bool = True

    def plan(self, spec: JobSpec) -> PlanReply:
        """The decision a job of ``spec`` would get now, or why it would get none."""
        if spec.cluster == "dedicated":
            result = place_dedicated(spec, self.instance_types, self.top_candidates)
            return _reply(result, [])
        now = self.clock.monotonic()
        tried = preempt.attempt(
            spec,
            f"plan:{spec.name}",
            self.world,
            now,
            self.ttl,
            self.top_candidates,
            enabled=self.preemption,
            explain_failure=True,
        )
        result, room = tried.result, tried.room
        if room is not None:  # evicted on the world tentatively: undone before returning, nothing stays booked
            room.undo(self.world)
            victims = [Preemption(job_id=v.job_id, replica=v.replica, node_id=v.node_id) for v in room.preempted()]
            return _reply(result, victims)
        if isinstance(result, NotPlaced) and spec.priority > 0:
            result = NotPlaced(f"{result.reason}; {tried.why}", result.nodes_total, result.excluded)
        return _reply(result, [])

    async def handle(self, msg: Msg) -> bytes:
        """The ``placement.plan`` endpoint (a bad body raises ``msgspec.DecodeError``: 400)."""
        spec = normalise(decode_job_request(msg.data), self.defaults)
        reply = self.plan(spec)
        log.debug("planned", name=spec.name, placed=reply.decision is not None)
        return _enc.encode(reply)


def _reply(result: Placed | NotPlaced, preemptions: list[Preemption]) -> PlanReply:
    if isinstance(result, NotPlaced):
        return PlanReply(
            failure=PlanFailure(reason=result.reason, nodes_total=result.nodes_total, excluded=result.excluded)
        )
    return PlanReply(
        decision=PlanDecision(assignments=result.assignments, candidates=result.candidates), preemptions=preemptions
    )
