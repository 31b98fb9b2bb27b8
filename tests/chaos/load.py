"""Steady load for fault scenarios: jobs submitted like a careful client, some cancelled.

A client that gets no answer (timeout, no responders, 503) retries with the *same*
``request_id``, as the idempotency contract intends; a job counts as submitted once
its ``submitted`` reply arrived. Every fifth placed shared job is cancelled. With ``pinned``
nodes, every ``pin_every``-th job may run only on them (``constraints.nodes``): when those
nodes are lost it fits nowhere, and must be ``degraded`` rather than forgotten.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import subjects as s


@dataclass
class Load:
    nc: Client
    rate: float = 50.0
    replicas: int = 1
    cancel_every: int = 5
    pinned: list[str] = field(default_factory=list)
    pin_every: int = 10
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    submitted: dict[str, str] = field(default_factory=dict)
    """request_id -> job_id of every job whose ``submitted`` reply arrived."""
    decided: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    retries: int = 0
    _n: int = 0
    _cancels: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        for subject in (s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.JOB_REJECTED):
            await self.nc.subscribe(subject, cb=self._on_decision)

    async def _on_decision(self, msg: Msg) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            return  # a poison message published by a scenario
        jid = data.get("job_id", "")
        self.decided.add(jid)
        first = data.get("revision", 1) == 1  # a later revision is a move, not a new placement
        if msg.subject == s.PLACEMENT_DECIDED and data.get("cluster") == "shared" and first:
            self._n += 1
            if self.cancel_every and self._n % self.cancel_every == 0:
                task = asyncio.get_running_loop().create_task(self._cancel(jid))
                self._cancels.add(task)
                task.add_done_callback(self._cancels.discard)

    async def _cancel(self, job_id: str) -> None:
        for _ in range(20):
            try:
                r = await self.nc.request(s.JOB_CANCEL, json.dumps({"job_id": job_id}).encode(), timeout=3)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.5)
                continue
            code = (r.headers or {}).get(s.ERROR_CODE_HEADER)
            if code in (None, "409"):
                self.cancelled.add(job_id)
                return
            await asyncio.sleep(0.5)

    async def cancels_done(self) -> None:
        """Wait for the cancels still being retried (a fault can delay their replies)."""
        while self._cancels:
            await asyncio.gather(*list(self._cancels), return_exceptions=True)

    def spec(self, i: int) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": f"chaos-{i}", "replicas": self.replicas}
        spec["resources"] = {"cpu": 0.5, "memory_mb": 256}
        if self.pinned and i % self.pin_every == 0:
            spec["constraints"] = {"nodes": self.pinned}
        return spec

    async def submit_one(self, i: int, spec: dict[str, Any] | None = None) -> str | None:
        """Submit job ``i`` (``spec``, else :meth:`spec`) until a ``submitted`` reply; its job id."""
        key = f"chaos-{self.run_id}-{i}"
        body = json.dumps({**(spec or self.spec(i)), "request_id": key}).encode()
        for attempt in range(60):
            try:
                r = await self.nc.request(s.JOB_SUBMIT, body, timeout=3)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError):
                self.retries += 1
                await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
                continue
            if r.headers and s.ERROR_CODE_HEADER in r.headers:
                self.retries += 1
                await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
                continue
            job_id: str = json.loads(r.data)["job_id"]
            self.submitted[key] = job_id
            return job_id
        return None

    async def run(self, duration: float) -> None:
        tasks = []
        t0 = time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < duration:
            due = int((time.perf_counter() - t0) * self.rate)
            while i < due:
                tasks.append(asyncio.create_task(self.submit_one(i)))
                i += 1
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
