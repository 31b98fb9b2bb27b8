"""A steady open-loop load of jobs that end, with memory bounded by the jobs in flight (not by the
jobs submitted: a million job ids would grow the harness the soak measures the system for).

Job ``i``: 1-3 replicas of 0.5 cpu / 256 MB, ``max_runtime_s`` from 5 to 60 s (teardown expires
it); every tenth is cancelled 2 s after its ``submitted`` reply and every tenth (another one)
completed after 3 s. A submit that gets no answer or an error (503 while a backlog drains, no
responders while the gateway restarts) is retried with the same ``request_id``, as in
``tests/chaos/load.py``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import subjects as s

log = structlog.get_logger("soak")

RECENT_S = 300.0
"""How long a submitted job's id is remembered (for the invariant check at the end)."""


def spec(i: int) -> dict[str, Any]:
    """Job ``i``'s spec: a deterministic mix of sizes and lifetimes."""
    return {
        "name": f"soak-{i}",
        "replicas": 1 + i % 3,
        "resources": {"cpu": 0.5, "memory_mb": 256},
        "max_runtime_s": 5 + (i * 7919) % 56,
    }


def ending(i: int) -> tuple[str, float] | None:
    """How job ``i`` ends early, if it does: (request subject, seconds after its submit)."""
    if i % 10 == 0:
        return s.JOB_CANCEL, 2.0
    if i % 10 == 5:
        return s.JOB_COMPLETE, 3.0
    return None


def backoff(attempt: int) -> float:
    """A client's wait before retry ``attempt`` (0, 1, ...): exponential from 0.2 s to 10 s, with
    jitter. (The first trial retried every 2 s at most: 20,000 waiting submits made 250,000 retries
    while placement restarted, and kept the gateway from answering PING for over a minute.)"""
    return min(10.0, 0.2 * 2.0**attempt) * random.uniform(0.5, 1.0)


@dataclass
class SoakLoad:
    nc: Client
    rate: float
    total: int
    max_inflight: int = 5_000
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    submitted: int = 0
    decided: int = 0
    failed: int = 0
    rejected: int = 0
    retries: int = 0
    errors: int = 0
    behind: int = 0
    """Times the generator waited because ``max_inflight`` submits were unanswered (then the load
    was not open-loop for a moment)."""
    error_codes: collections.Counter[str] = field(default_factory=collections.Counter)
    undecided: set[str] = field(default_factory=set)
    """Jobs submitted and not yet decided (as seen on the decision subjects): bounded by in-flight."""
    early: set[str] = field(default_factory=set)
    """Decisions seen before their job's submit reply."""
    live: set[str] = field(default_factory=set)
    """Jobs placed (revision 1 seen) and not yet released: bounded by the live jobs."""
    recent: collections.deque[tuple[float, str]] = field(default_factory=collections.deque)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _milestones: dict[int, asyncio.Event] = field(default_factory=dict)
    _settled: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        for subject in (s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.JOB_REJECTED, s.PLACEMENT_RELEASED):
            await self.nc.subscribe(subject, cb=self._on_decision)

    async def _on_decision(self, msg: Msg) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            return
        jid = str(data.get("job_id", ""))
        if msg.subject == s.PLACEMENT_RELEASED:
            self.live.discard(jid)
            if not self.live:
                self._idle.set()
            return
        if msg.subject == s.PLACEMENT_DECIDED and data.get("revision", 1) != 1:
            return  # a move, not a decision
        if msg.subject == s.PLACEMENT_DECIDED:
            self.decided += 1
            self.live.add(jid)
            self._idle.clear()
        elif msg.subject == s.PLACEMENT_FAILED:
            self.failed += 1
        else:
            self.rejected += 1
        if jid in self.undecided:
            self.undecided.discard(jid)
            if not self.undecided:
                self._settled.set()
        elif len(self.early) < self.max_inflight:
            self.early.add(jid)

    def milestone(self, jobs: int) -> asyncio.Event:
        """Set once ``jobs`` jobs were submitted."""
        ev = self._milestones.setdefault(jobs, asyncio.Event())
        if self.submitted >= jobs:
            ev.set()
        return ev

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _request(self, subject: str, body: bytes) -> tuple[str | None, bytes] | None:
        try:
            r = await self.nc.request(subject, body, timeout=5)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError):
            return None
        return (r.headers or {}).get(s.ERROR_CODE_HEADER), r.data

    async def submit_one(self, i: int) -> None:
        body = json.dumps({**spec(i), "request_id": f"soak-{self.run_id}-{i}"}).encode()
        for attempt in range(60):
            got = await self._request(s.JOB_SUBMIT, body)
            if got is None or got[0] is not None:
                self.retries += 1
                if got is not None:
                    self.error_codes[f"submit {got[0]}"] += 1
                await asyncio.sleep(backoff(attempt))  # a client's back-off, not a wait for an event
                continue
            job_id = str(json.loads(got[1])["job_id"])
            self.submitted += 1
            if job_id in self.early:
                self.early.discard(job_id)
            else:
                self.undecided.add(job_id)
                self._settled.clear()
            now = time.monotonic()
            self.recent.append((now, job_id))
            while self.recent and self.recent[0][0] < now - RECENT_S:
                self.recent.popleft()
            if (ev := self._milestones.get(self.submitted)) is not None:
                ev.set()
            if (end := ending(i)) is not None:
                asyncio.get_running_loop().call_later(end[1], self._spawn, self._end(end[0], job_id))
            return
        self.errors += 1
        log.warning("submit given up", job=i)

    async def _end(self, subject: str, job_id: str) -> None:
        fields = {"outcome": "succeeded"} if subject == s.JOB_COMPLETE else {}
        body = json.dumps({"job_id": job_id, **fields}).encode()
        for attempt in range(20):
            got = await self._request(subject, body)
            if got is not None and got[0] in (None, "409"):  # 409: it had ended already (expired)
                return
            if got is not None and got[0] not in ("503", "500"):
                self.errors += 1
                self.error_codes[f"{subject} {got[0]}"] += 1
                return
            await asyncio.sleep(backoff(attempt))
        self.errors += 1
        self.error_codes[f"{subject} no answer"] += 1

    async def run(self) -> None:
        """Submit ``total`` jobs at ``rate`` per second (open loop), then wait for their submits."""
        t0 = time.perf_counter()
        i = 0
        while i < self.total:
            due = min(self.total, int((time.perf_counter() - t0) * self.rate))
            while i < due:
                if len(self._tasks) >= self.max_inflight:
                    self.behind += 1
                    break
                self._spawn(self.submit_one(i))
                i += 1
            await asyncio.sleep(0.02)  # the generator's clock tick
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def settled(self, timeout: float) -> bool:
        """Whether every submitted job was decided within ``timeout`` (the decisions of jobs whose
        submit reply came during a gateway restart are waited for too)."""
        if not self.undecided:
            return True
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def idle(self, timeout: float) -> bool:
        """Whether every placed job was released within ``timeout`` (after the load: all of them
        end by their ``max_runtime_s``)."""
        if not self.live:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
