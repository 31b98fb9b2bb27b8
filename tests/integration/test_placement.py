"""Placement through real nats-server and service processes: synchronous answers,
pending jobs, the deadline with its explanation, and a crash between decisions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import subjects as s
from tests.support.api import job
from tests.support.config import config
from tests.support.events import node
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration


async def ask(nc: Client, body: bytes, timeout: float = 10) -> tuple[int, dict[str, Any]]:
    """``placement.request``: (error code or 200, body)."""
    reply = await nc.request(s.PLACEMENT_REQUEST, body, timeout=timeout)
    code = int((reply.headers or {}).get(s.ERROR_CODE_HEADER, 200))
    return code, json.loads(reply.data)


async def test_placement_request_is_answered_synchronously_and_a_pending_job_waits_for_a_node(
    nc: Client, services: Spawn, events, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    await services("gateway", "intake", "placement", env=config(tmp_path, placement_request_timeout_s=1.5))
    await node(nc, "n1", 4.0)
    await node(nc, "n2", 8.0)
    decided = await events(s.PLACEMENT_DECIDED)

    code, body = await ask(nc, job("sync", 2, replicas=2))
    assert code == 200 and body["type"] == s.PLACEMENT_DECIDED
    assert [a["node_id"] for a in body["assignments"]] == ["n2", "n2"]  # n2: 8 free, then 6 > 4
    assert [c["node_id"] for c in body["candidates"]] == ["n2", "n1"]

    code, body = await ask(nc, job("cobol", 1, technology="nope"))
    assert code == 200 and body["type"] == s.JOB_REJECTED

    # n2 has 4 cpu left after the first job, n1 4: a 6-cpu job waits (504 with its job_id)
    code, body = await ask(nc, job("big", 6))
    assert code == 504
    job_id = body["error"]["job_id"]
    assert job_id
    await node(nc, "n3", 2.0)  # capacity changed, still no fit
    await node(nc, "n4", 6.0)
    d = await decided.wait(job_id, timeout=10)
    assert [a["node_id"] for a in d["assignments"]] == ["n4"]


async def test_deadline_expiry_publishes_an_explained_failure(nc: Client, services: Spawn, tmp_path: Path) -> None:
    await services("gateway", "intake", "placement", env=config(tmp_path, placement_deadline_s=1.0))
    await node(nc, "a", 8.0)  # lacks unikernel
    await node(nc, "b", 8.0, state="down", techs=("unikernel",))
    await node(nc, "c", 2.0, techs=("unikernel", "docker"))  # too small
    code, body = await ask(nc, job("uk", 4, technology="unikernel"))
    assert code == 200 and body["type"] == s.PLACEMENT_FAILED
    assert body["reason"] == "0/3 nodes available: 1 inactive, 1 lack technology unikernel, 1 insufficient cpu"
    assert body["nodes_total"] == 3
    assert body["excluded"] == {
        "inactive": 1,
        "technology": 1,
        "cpu": 1,
        "memory": 0,
        "gpu": 0,
        "labels": 0,
        "nodes": 0,
        "distance": 0,
        "spread_by": 0,
        "spread": 0,
        "quota": 0,
    }


async def test_killing_placement_between_decisions_neither_double_books_nor_forgets_a_pending_job(
    nc: Client, services: Spawn, events, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = config(tmp_path, placement_request_timeout_s=1.5)
    (placement,) = await services("placement", env=env)
    await services("gateway", "intake", env=env)
    decided = await events(s.PLACEMENT_DECIDED)
    # Node agents keep reporting 4 free cpu: only the ledger knows what is taken.
    await node(nc, "n0", 4.0)
    await node(nc, "n1", 4.0)
    where: dict[str, str] = {}
    for name in ("a", "b"):
        code, body = await ask(nc, job(name, 3))
        assert code == 200, body
        where[name] = body["assignments"][0]["node_id"]
    assert sorted(where.values()) == ["n0", "n1"]
    code, body = await ask(nc, job("c", 3))
    assert code == 504  # pending, held by this placement process
    pending_c = body["error"]["job_id"]

    placement.kill()
    await services("placement", env=env)  # rebuilds the ledger from PLACEMENTS
    code, body = await ask(nc, job("d", 3))
    assert code == 504, body  # n0 and n1 report 4 free, but 3 of each are reserved
    pending_d = body["error"]["job_id"]

    await node(nc, "n2", 4.0)
    await node(nc, "n3", 4.0)
    for job_id, name in ((pending_d, "d"), (pending_c, "c")):  # c comes back once its ack wait ran out
        d = await decided.wait(job_id, timeout=s.PLACEMENT_JOBS.ack_wait_s + 10)
        where[name] = d["assignments"][0]["node_id"]
    assert sorted(where.values()) == ["n0", "n1", "n2", "n3"]  # one 3-cpu job per 4-cpu node
    assert sorted(len(v) for v in decided.by_job.values()) == [1, 1, 1, 1]  # each job decided once
    info = await nc.jetstream().stream_info(s.PLACEMENTS.name)
    assert info.state.messages == 4


async def test_placement_request_repeated_after_the_decision_gets_the_same_decision(
    nc: Client, services: Spawn, database_url: str
) -> None:
    await services("gateway", "intake", "placement", "metadata", env={"DATABASE_URL": database_url})
    await node(nc, "r1", 8)
    body = job("again", 1, request_id="same-key")
    code, first = await ask(nc, body)
    assert code == 200 and first["type"] == s.PLACEMENT_DECIDED
    for _ in range(100):  # until metadata has projected it (bounded)
        reply = await nc.request(s.JOB_EVENTS, json.dumps({"job_id": first["job_id"]}).encode(), timeout=5)
        if any(e["type"] == s.PLACEMENT_DECIDED for e in json.loads(reply.data).get("events", [])):
            break
        await asyncio.sleep(0.05)
    code, second = await ask(nc, body, timeout=3)
    assert code == 200
    assert second["job_id"] == first["job_id"] and second["assignments"] == first["assignments"]
