"""PostgreSQL retention (issue #21): ended jobs forgotten after ``jobs_keep_s``, node history after
``node_history_keep_s``, every ``cleanup_every_s``, by one metadata instance at a time.

Each round takes a PostgreSQL advisory lock (``pg_try_advisory_lock``: an instance that finds it
held skips the round, another is sweeping) and deletes in batches of :data:`BATCH` rows per
statement, each its own transaction, so the projection never waits long on a lock. A job is
forgotten with its events (its history, placements, instances and reservations all live in
``jobs`` and ``events``); ``job.get``/``job.events`` then answer 404 with
:func:`forgotten_message`. Live jobs are never touched: only a terminal state (or no state at
all: an orphan) qualifies, and the time that counts is the job's last event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from services.metadata.adapters import Database, Swept, is_unavailable
from services.runtime import backoff
from services.runtime.config import RetentionConf

log = structlog.get_logger()

BATCH = 1000
"""Rows per ``DELETE`` statement."""


def cutoffs(conf: RetentionConf, now: datetime) -> tuple[datetime, datetime]:
    """(jobs whose last event is older than this go, node history older than this goes)."""
    return now - timedelta(seconds=conf.jobs_keep_s), now - timedelta(seconds=conf.node_history_keep_s)


def span(seconds: float) -> str:
    """A window in words: ``30 days``, ``1 day``, ``12 hours``, ``5 minutes``, ``2 seconds``."""
    for unit, size in (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size:
            n = seconds / size
            return f"{n:g} {unit}" + ("" if n == 1 else "s")
    return f"{seconds:g} second" + ("" if seconds == 1 else "s")


def forgotten_message(job_id: str, jobs_keep_s: float | None) -> str:
    """The 404 of a job metadata does not know: never existed, another tenant's, or forgotten."""
    if jobs_keep_s is None:
        return f"unknown job {job_id}"
    return f"unknown job {job_id}, or one that ended more than {span(jobs_keep_s)} ago and was forgotten"


class Retention:
    """The retention loop of one metadata instance (the lock makes the rounds of all instances one at
    a time). ``forget`` drops deleted jobs from the projector's cache."""

    def __init__(
        self,
        db: Database,
        conf: RetentionConf,
        forget: Callable[[list[str]], None],
        *,
        batch: int = BATCH,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._conf = conf
        self._forget = forget
        self._batch = batch
        self._clock = clock
        self.rounds = 0
        self.swept = Swept()
        """Totals deleted by this instance."""

    async def once(self) -> Swept | None:
        """One round; None if another instance is sweeping."""
        jobs_before, nodes_before = cutoffs(self._conf, self._clock())
        swept = await self._db.sweep(jobs_before, nodes_before, self._batch, self._forget)
        if swept is None:
            log.debug("retention: another instance is sweeping")
            return None
        self.rounds += 1
        for field in ("jobs", "job_events", "history", "node_facts"):
            setattr(self.swept, field, getattr(self.swept, field) + getattr(swept, field))
        if swept.jobs or swept.history or swept.node_facts:
            log.info(
                "retention swept",
                jobs=swept.jobs,
                job_events=swept.job_events,
                node_history=swept.history,
                node_facts=swept.node_facts,
            )
        return swept

    async def run(self, stop: asyncio.Event) -> None:
        """A round every ``cleanup_every_s`` until ``stop``; an outage skips a round, a bug is logged."""
        while not await backoff.sleep_unless(stop, self._conf.cleanup_every_s):
            try:
                await self.once()
            except Exception as e:
                if not is_unavailable(e):
                    log.exception("retention round failed")
                else:
                    log.warning("retention round skipped: database unavailable", error=repr(e))


__all__ = ["BATCH", "Retention", "cutoffs", "forgotten_message", "span"]
