"""What a Cluster Manager sees of placement in integration tests: every ``placement.decided`` /
``placement.degraded`` by job, from a core subscription, to wait on a revision itself."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import subjects as s
from tests.support.api import request
from tests.support.config import config
from tests.support.invariants import check_live
from tests.support.servers import Spawn

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


async def place(nc: Client, body: bytes) -> Event:
    """``placement.request`` with ``body``, asserting it was decided; the decision."""
    code, reply = await request(nc, s.PLACEMENT_REQUEST, body)
    assert code == 200 and reply["type"] == s.PLACEMENT_DECIDED, reply
    out: Event = reply
    return out


def nodes_of(e: Event) -> dict[int, str]:
    """A decision's node by replica."""
    return {a["replica"]: a["node_id"] for a in e["assignments"]}


async def start_placement(services: Spawn, tmp_path: Path, **timeouts: float) -> None:
    """The gateway, intake and placement, configured by :func:`tests.support.config.config`."""
    await services("gateway", "intake", "placement", env=config(tmp_path, **timeouts))


async def consistent(nc: Client) -> None:
    """The invariant checker is green on the live streams (jobs may still run)."""
    report = await check_live(nc.jetstream(), require_release=False)
    assert report.ok, report
