"""Load shedding at the door: refuse new jobs while too many wait to be placed.

Without it an overloaded system queues every submit in JOBS and answers each one "stored"
at once, while the time to a decision grows without bound (seconds, then minutes), and the
server's own acks start timing out. The gateway instead polls how many submitted jobs wait
for intake or placement (``num_pending`` of their durable consumers, two cheap JetStream
API calls per interval) and, above ``admission.max_backlog``, answers a submit with 503
before anything is stored: the client retries later with the same ``request_id``.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.js import JetStreamContext

from schemas import subjects as s
from services.runtime.backoff import sleep_unless
from services.runtime.config import AdmissionConf
from services.runtime.micro import RequestError

log = structlog.get_logger()

QUEUES = (s.INTAKE_JOBS, s.PLACEMENT_JOBS)
"""The consumers whose undelivered messages are jobs waiting to be placed."""


def verdict(waiting: int, limit: int) -> RequestError | None:
    """The 503 a submit gets while ``waiting`` exceeds ``limit`` (0: no limit), else None."""
    if limit and waiting > limit:
        return RequestError(
            503, f"overloaded: {waiting} jobs are waiting to be placed (limit {limit}); retry with the same request_id"
        )
    return None


class Admission:
    def __init__(self, js: JetStreamContext, conf: AdmissionConf) -> None:
        self._js = js
        self._conf = conf
        self.waiting = 0

    def check(self) -> None:
        """Raise the 503 when the backlog is over the limit."""
        refusal = verdict(self.waiting, self._conf.max_backlog)
        if refusal is not None:
            raise refusal

    async def run(self, stop: asyncio.Event) -> None:
        """Poll the backlog until ``stop``; an unanswered poll keeps the last figure."""
        if not self._conf.max_backlog:
            return
        while not stop.is_set():
            try:
                infos = [await self._js.consumer_info(q.stream, q.durable) for q in QUEUES]
                waiting = sum(i.num_pending or 0 for i in infos)
                if (waiting > self._conf.max_backlog) != (self.waiting > self._conf.max_backlog):
                    log.warning("admission", shedding=waiting > self._conf.max_backlog, waiting=waiting)
                self.waiting = waiting
            except Exception as e:  # consumer not declared yet, server restarting: keep the last figure
                log.debug("backlog poll failed", error=repr(e))
            await sleep_unless(stop, self._conf.check_interval_s)
