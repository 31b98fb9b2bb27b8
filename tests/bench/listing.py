"""Listing a large fleet (issue 24): ``python -m tests.bench listing``.

Starts its own nats-server (the repo's nats.conf) and PostgreSQL, then for each fleet size
(``BENCH_LISTING_NODES``, default "10000,100000") a fresh database and metadata process:
publishes one status per node as the ``node`` user, waits until the projection holds them
all, then measures

- the walk: every node through ``node.list`` pages (``limit`` 5000, so the byte budget ends
  each page), from the first request to the last page, and the number of pages;
- the summary: ``node.list {"summary": true}``, ``BENCH_LISTING_CALLS`` calls (default 30), median and p99.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from services.devstack import NatsServer, spawn_service
from tests.support.events import fleet_status
from tests.support.servers import create_database, nats_auth
from tests.support.system import servers_only


async def _request(nc: Client, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    reply = await nc.request(s.NODE_LIST, json.dumps(body).encode(), timeout=30)
    if reply.headers and s.ERROR_CODE_HEADER in reply.headers:
        raise RuntimeError(f"node.list failed: {reply.data[:300]!r}")
    return json.loads(reply.data), len(reply.data)


async def _wait(cond: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await cond():
        if loop.time() > deadline:
            raise TimeoutError(f"listing bench: {what} not reached in {timeout} s")
        await asyncio.sleep(0.1)


async def _one(
    nc: Client, server: NatsServer, admin_url: str, env: dict[str, str], n: int, tmp: Path
) -> dict[str, Any]:
    js = nc.jetstream()
    await js.purge_stream(s.NODES.name)
    db = f"bench_listing_{n}_{uuid.uuid4().hex[:6]}"
    url = await create_database(admin_url, db)
    proc = spawn_service("metadata", {**env, "DATABASE_URL": url}, log_path=tmp / f"metadata-{n}.log")
    try:

        async def up() -> bool:
            try:
                await _request(nc, {"summary": True})
                return True
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError, RuntimeError):
                return False

        await _wait(up, 60, "metadata up")
        now = datetime.now(UTC)
        agent = await nats.connect(server.url, **nats_auth("node"))
        t0 = time.perf_counter()
        for i in range(n):
            st = fleet_status(i, now)
            await agent.publish(ev.subject_of(st), ev.encode(st))
            if i % 5000 == 4999:
                await agent.flush()
        await agent.flush()
        await agent.close()

        async def projected() -> bool:
            return int((await _request(nc, {"summary": True}))[0]["summary"]["total"]) == n

        await _wait(projected, 600, f"{n} nodes projected")
        projected_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        after: str | None = None
        seen, pages, largest = 0, 0, 0
        while True:
            page, size = await _request(nc, {"limit": 5000, **({"after": after} if after else {})})
            seen, pages, largest = seen + page["count"], pages + 1, max(largest, size)
            after = page["next"]
            if after is None:
                break
        walk_s = time.perf_counter() - t1
        if seen != n:
            raise RuntimeError(f"walked {seen} of {n} nodes")
        lat: list[float] = []
        for _ in range(int(os.environ.get("BENCH_LISTING_CALLS", "30"))):
            t = time.perf_counter()
            await _request(nc, {"summary": True})
            lat.append(1000 * (time.perf_counter() - t))
        lat.sort()
    finally:
        proc.stop()
    return {
        "nodes": n,
        "projected_s": round(projected_s, 1),
        "walk_s": round(walk_s, 2),
        "pages": pages,
        "largest_reply_bytes": largest,
        "summary_ms_median": round(statistics.median(lat), 1),
        "summary_ms_p99": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
        "load_before": round(os.getloadavg()[0], 2),
    }


async def run() -> dict[str, Any]:
    sizes = [int(x) for x in os.environ.get("BENCH_LISTING_NODES", "10000,100000").split(",") if x.strip()]
    async with servers_only("listing") as b:
        runs = [await _one(b.nc, b.nats, b.admin_url, b.env, n, b.tmp) for n in sizes]
    return {"runs": runs}


def markdown(result: dict[str, Any]) -> str:
    rows = [
        f"| {r['nodes']:,} | {r['walk_s']} | {r['pages']} | {r['largest_reply_bytes']:,} | "
        f"{r['summary_ms_median']} | {r['summary_ms_p99']} | {r['projected_s']} |"
        for r in result["runs"]
    ]
    return "\n".join(
        [
            "### Listing the fleet: node.list pages and summary",
            "",
            "| nodes | whole fleet through the cursor, s | pages | largest reply, B | summary median, ms "
            "| summary p99, ms | published + projected, s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
