"""What a Cluster Manager sees of placement in integration tests: every ``placement.decided`` /
``placement.degraded`` by job, from a core subscription, to wait on a revision itself."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import subjects as s

Event = dict[str, Any]


class Placements:
    """Every ``placement.decided`` / ``placement.degraded`` by job, to wait on a revision itself."""

    def __init__(self) -> None:
        self.by_job: dict[str, list[Event]] = {}
        self._changed = asyncio.Condition()

    async def cb(self, msg: Msg) -> None:
        data = json.loads(msg.data)
        async with self._changed:
            self.by_job.setdefault(data["job_id"], []).append(data)
            self._changed.notify_all()

    async def wait(self, job_id: str, pred: Callable[[Event], bool], timeout: float = 15.0) -> Event:
        """The job's first event that ``pred`` accepts, waiting for it at most ``timeout`` seconds."""

        def found() -> Event | None:
            return next((e for e in self.by_job.get(job_id, []) if pred(e)), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout)
            hit = found()
            assert hit is not None
            return hit


async def watch_placements(nc: Client) -> Placements:
    """A :class:`Placements` subscribed (and flushed) on ``nc``."""
    p = Placements()
    for subject in (s.PLACEMENT_DECIDED, s.PLACEMENT_DEGRADED):
        await nc.subscribe(subject, cb=p.cb)
    await nc.flush()
    return p


def decided(revision: int) -> Callable[[Event], bool]:
    return lambda e: e["type"] == s.PLACEMENT_DECIDED and e.get("revision", 1) == revision


def degraded(revision: int) -> Callable[[Event], bool]:
    return lambda e: e["type"] == s.PLACEMENT_DEGRADED and e["revision"] == revision
