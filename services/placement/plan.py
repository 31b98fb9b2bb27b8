"""``placement.plan``: what would be decided for a JobSpec right now, booking and storing nothing.

The body is decoded and normalised exactly as the gateway does for ``job.submit``
(:func:`schemas.jobs.decode_job_request`, the legacy body included, then
:func:`schemas.jobs.normalise` with the configured defaults), so a plan answers for the job a
submission would create. The engine runs on this instance's ledger as a decision would
(:func:`services.placement.engine.place`, :func:`~services.placement.engine.place_dedicated`),
with the full explanation when nothing fits; the world is not touched (``place`` never
reserves). ``preemptions`` stays empty until priorities preempt (§8.3).
"""

from __future__ import annotations

import msgspec
import structlog
from nats.aio.msg import Msg

from schemas.jobs import Defaults, JobSpec, decode_job_request, normalise
from schemas.replies import PlanDecision, PlanFailure, PlanReply
from services.placement.engine import NotPlaced, place, place_dedicated
from services.placement.ports import Clock
from services.placement.state import World
from services.runtime.config import InstanceType

__all__ = ["MAX_BODY", "Planner"]

log = structlog.get_logger()

MAX_BODY = 256 * 1024
"""The gateway's limit for a JobSpec body (a plan takes the same bodies); larger ones get 413."""

_enc = msgspec.json.Encoder()


class Planner:
    def __init__(
        self,
        world: World,
        clock: Clock,
        defaults: Defaults,
        instance_types: list[InstanceType],
        *,
        ttl: float,
        top_candidates: int,
    ) -> None:
        self.world = world
        self.clock = clock
        self.defaults = defaults
        self.instance_types = instance_types
        self.ttl = ttl
        self.top = top_candidates

    def plan(self, spec: JobSpec) -> PlanReply:
        """The decision a job of ``spec`` would get now, or why it would get none."""
        if spec.cluster == "dedicated":
            result = place_dedicated(spec, self.instance_types, self.top)
        else:
            result = place(spec, self.world, self.clock.monotonic(), self.ttl, self.top, explain_failure=True)
        if isinstance(result, NotPlaced):
            return PlanReply(
                failure=PlanFailure(reason=result.reason, nodes_total=result.nodes_total, excluded=result.excluded)
            )
        return PlanReply(decision=PlanDecision(assignments=result.assignments, candidates=result.candidates))

    async def handle(self, msg: Msg) -> bytes:
        """The ``placement.plan`` endpoint (a bad body raises ``msgspec.DecodeError``: 400)."""
        spec = normalise(decode_job_request(msg.data), self.defaults)
        reply = self.plan(spec)
        log.debug("planned", name=spec.name, placed=reply.decision is not None)
        return _enc.encode(reply)
