"""Accepted jobs: decided at once, or held until they fit or reach their deadline.

A job from the durable ``placement`` consumer is queued for the decider; its delivery
is acked (by the consumer loop) once the decision is stored. A job that does not fit
yet is *held*: left unacked, kept ours by in-progress pings, retried whenever capacity
changes (a status, a release), and tried a last time with an explanation at its
deadline (``placement_deadline_s`` from submission), which then stores
``placement.failed``. A job that would exceed its tenant's compute budget (``cpu_hours``,
§8.4) is rejected instead (``job.rejected``, with the figures), when it arrives or is retried.
After a crash the held messages are redelivered, so no pending
job is forgotten; a redelivered job already decided is just acked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from schemas import events as ev
from schemas import subjects as s
from services.placement.decider import Decider, Pending
from services.placement.ledger import Ledger
from services.placement.ports import Clock
from services.runtime.delivery import Delivery, stream_sequence

log = structlog.get_logger()


class Jobs:
    """The handler of accepted jobs and the retry loop of the held ones."""

    def __init__(
        self,
        ledger: Ledger,
        decider: Decider,
        clock: Clock,
        deadline_s: float,
        capacity_changed: asyncio.Event,
        *,
        over_budget: Callable[[ev.JobAccepted], str | None] | None = None,
        reject: Callable[[ev.JobAccepted, str], Awaitable[None]] | None = None,
    ) -> None:
        self.decided = ledger.decided  # the ledger's set, never rebound
        self.decide = decider.decide
        self.clock = clock
        self.deadline_s = deadline_s
        self.capacity_changed = capacity_changed
        self.pending: dict[str, Pending] = {}
        """Held jobs by job id."""
        self.over_budget = over_budget
        self.reject = reject

    async def rejected(self, event: ev.JobAccepted) -> bool:
        """Reject ``event``'s job when it would exceed its tenant's compute budget."""
        if self.over_budget is None or self.reject is None:
            return False
        why = self.over_budget(event)
        if why is None:
            return False
        await self.reject(event, why)
        log.info("rejected: compute budget", job_id=event.job_id, reason=why)
        return True

    async def on_accepted(self, event: ev.JobAccepted, d: Delivery) -> None:
        bound = log.bind(job_id=event.job_id)
        if event.job_id in self.decided:
            bound.debug("already decided; acking redelivery")
            return
        held = self.pending.get(event.job_id)
        if held is not None:  # redelivered to us while we hold it (a ping came late)
            held.delivery = d
            d.hold()
            return
        if await self.rejected(event):
            return
        submitted = event.submitted_at or event.at
        age = (self.clock.wall() - submitted).total_seconds()
        order = stream_sequence(d.msg.reply)  # submission order, also after a restart
        p = Pending(event, d, self.clock.monotonic() + self.deadline_s - max(0.0, age), order)
        if await self.decide(p) != "pending":
            return
        d.hold()
        self.pending[event.job_id] = p
        bound.info("pending: no fit yet", pending=len(self.pending))

    async def retry_loop(self, stop: asyncio.Event) -> None:
        """Retry held jobs when capacity changes; fail them at their deadline; ping them."""
        clock = self.clock
        changed_event = self.capacity_changed
        last_ping = clock.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed_event.wait(), 0.5)
            if not self.pending:
                changed_event.clear()
                continue
            changed = changed_event.is_set()
            changed_event.clear()
            now = clock.monotonic()
            due = [p for p in self.pending.values() if changed or now >= p.deadline]
            for p in [p for p in due if await self.rejected(p.event)]:
                due.remove(p)
                del self.pending[p.event.job_id]
                await p.delivery.ack()
            outcomes = await asyncio.gather(
                *(self.decide(p, final=now >= p.deadline) for p in due), return_exceptions=True
            )
            for p, outcome in zip(due, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    log.warning("decision not stored; will retry", job_id=p.event.job_id, error=repr(outcome))
                elif outcome != "pending" and self.pending.pop(p.event.job_id, None) is not None:
                    await p.delivery.ack()
            if now - last_ping > s.PLACEMENT_JOBS.ack_wait_s / 3:
                last_ping = now
                for p in list(self.pending.values()):
                    await p.delivery.in_progress()
            if changed:
                await asyncio.sleep(0.05)  # coalesce bursts of node updates
