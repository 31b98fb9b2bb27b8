"""``job.scale_requested`` (stored by the gateway's ``job.scale``): each request made the job's
next revision, reason ``scale``, through the decider's optimistic chain.

The durable ``placement-scales`` consumer hands out one request at a time across every
placement instance, in stream order, so a job's requests apply in the order they were stored
and the latest wins. Outcomes:

- the job ended (released) or never lived here: nothing (the gateway answered 409 when it knew);
- the job is decided: the decider builds the revision on its ledger (shared: shrink releases
  the removed replicas' reservations, growth places the new ones or leaves them missing with
  ``placement.degraded``; dedicated: instance types for the new count, for the provisioner);
  a count the latest revision already has stores nothing (a redelivery, a repeat);
- the job is accepted but not decided yet: the request waits (in-progress pings) until the
  ledger has its decision, its failure or its release, for at most ``wait_s`` from the
  request (then it is dropped, logged: a job that was rejected never reaches PLACEMENTS).

The request is acked once its revision is stored, so a crash before that hands it to another
instance, which finds either the revision (nothing to do) or the old count (does it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

import msgspec
import structlog

from schemas import events as ev
from schemas import subjects as s
from services.placement.ledger import Ledger
from services.placement.ports import Clock
from services.runtime.delivery import Delivery

log = structlog.get_logger()

decoder = msgspec.json.Decoder(ev.JobScaleRequested)


@dataclass(slots=True)
class Scales:
    ledger: Ledger
    scale: Callable[[str, int], asyncio.Future[str]]
    clock: Clock
    _: KW_ONLY
    wait_s: float
    ping_s: float = s.PLACEMENT_SCALES.ack_wait_s / 3

    def _known(self, job_id: str) -> bool:
        """The ledger has the job's decision, failure or release."""
        led = self.ledger
        return job_id in led.decided or job_id in led.ended or job_id in led.world.released

    async def on_scale(self, event: ev.JobScaleRequested, d: Delivery) -> None:
        bound = log.bind(job_id=event.job_id, replicas=event.replicas)
        if not self._known(event.job_id) and not await self._wait(event, d):
            bound.warning("scale dropped: the job has no decision", waited_s=self.wait_s)
            return
        outcome = await self.scale(event.job_id, event.replicas)
        bound.info("scale handled", outcome=outcome)

    async def _wait(self, event: ev.JobScaleRequested, d: Delivery) -> bool:
        """Wait until the ledger knows the job (True), or ``wait_s`` from the request (False)."""
        left = self.wait_s - max(0.0, (self.clock.wall() - event.at).total_seconds())
        deadline = self.clock.monotonic() + left
        while not self._known(event.job_id):
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ledger.advanced(), min(left, self.ping_s))
            await d.in_progress()
        return True
