"""The invariant checker reads a live server's streams."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from schemas import subjects as s
from tests.support.api import DEMO
from tests.support.config import config
from tests.support.events import node, publish_nodes
from tests.support.invariants import check_live
from tests.support.servers import Spawn
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_a_short_run_is_clean(nc: Client, services: Spawn, events) -> None:  # type: ignore[no-untyped-def]
    await services("gateway", "intake", "placement")
    await publish_nodes(nc)
    decided = await events(s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.JOB_REJECTED)
    ids = [json.loads((await nc.request(s.JOB_SUBMIT, DEMO, timeout=5)).data)["job_id"] for _ in range(20)]
    for j in ids:
        await decided.wait(j)
    report = await check_live(nc.jetstream(), submitted_ids=ids)
    assert report.ok, report
    assert report.jobs == 20 and report.decided == 20


async def _heartbeat(nc: Client, alive: dict[str, float]) -> None:
    """Node agents: each node in ``alive`` (id -> cores) reports every 0.2 s; one removed falls silent."""
    while True:
        for node_id, cpu in list(alive.items()):
            await node(nc, node_id, cpu)
        await asyncio.sleep(0.2)


async def test_a_lost_node_moves_its_replicas_and_the_history_checks(  # type: ignore[no-untyped-def]
    nc: Client, services: Spawn, events, tmp_path: Path
) -> None:
    await services("gateway", "intake", "placement", env=config(tmp_path, node_ttl_s=1, node_lost_s=2))
    alive = {"big": 16.0, "n1": 4.0, "n2": 4.0}
    beat = asyncio.create_task(_heartbeat(nc, alive))
    try:
        decided = await events(s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED)
        spread = {"name": "s", "replicas": 2, "resources": {"cpu": 1, "memory_mb": 64}, "constraints": {"spread": True}}
        pinned = {"name": "p", "resources": {"cpu": 1, "memory_mb": 64}, "constraints": {"nodes": ["big"]}}
        ids = []
        for body in (spread, pinned):
            reply = await nc.request(s.JOB_SUBMIT, json.dumps(body).encode(), timeout=5)
            ids.append(json.loads(reply.data)["job_id"])
        first = [await decided.wait(j) for j in ids]
        assert all(any(a["node_id"] == "big" for a in d["assignments"]) for d in first), first
        del alive["big"]  # its agent dies: lost 2 s after its last status

        async def settled() -> bool:
            r = await check_live(nc.jetstream(), submitted_ids=ids, node_lost_s=2)
            return r.revisions >= 2 and r.degraded >= 1 and r.ok

        await eventually(settled, timeout=20, what="both jobs off the lost node, the pinned one degraded")
    finally:
        beat.cancel()
    report = await check_live(nc.jetstream(), submitted_ids=ids, node_lost_s=2)
    assert report.ok, report.violations
