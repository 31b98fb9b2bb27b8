"""End to end through a real nats-server and real service processes, driven as a user would:
plain core requests to ``job.submit`` and a core subscription to ``placement.decided``."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client

from schemas import subjects as s
from tests.support.api import DEMO
from tests.support.events import publish_nodes
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration


async def test_submit_then_placement_decided(nc: Client, services: Spawn, events) -> None:  # type: ignore[no-untyped-def]
    await services("gateway", "intake", "placement")
    await publish_nodes(nc)
    decided = await events(s.PLACEMENT_DECIDED)
    reply = await nc.request(s.JOB_SUBMIT, DEMO, timeout=5)
    assert reply.headers is None or s.ERROR_HEADER not in reply.headers
    body = json.loads(reply.data)
    assert body["state"] == "submitted" and body["job_id"]
    d = await decided.wait(body["job_id"])
    assert d["type"] == "placement.decided"
    assert [(a["replica"], a["node_id"]) for a in d["assignments"]] == [
        (0, "n0"),
        (1, "n1"),
    ]  # n0 then has 7 cpu and less memory than n1
    assert [c["node_id"] for c in d["candidates"]] == ["n0", "n1", "n2", "n3", "n4"]
    # what was acknowledged is in the JOBS stream
    js = nc.jetstream()
    info = await js.stream_info(s.JOBS.name)
    assert info.state.messages >= 2  # submitted + accepted


async def test_idempotent_submit_by_header_and_by_request_id(nc: Client, services: Spawn) -> None:
    await services("gateway")
    a = json.loads((await nc.request(s.JOB_SUBMIT, DEMO, timeout=5, headers={"Nats-Msg-Id": "k-1"})).data)
    b = json.loads(
        (await nc.request(s.JOB_SUBMIT, b'{"name": "other"}', timeout=5, headers={"Nats-Msg-Id": "k-1"})).data
    )
    assert a["job_id"] == b["job_id"]
    c = json.loads((await nc.request(s.JOB_SUBMIT, b'{"name": "x", "request_id": "k-2"}', timeout=5)).data)
    d = json.loads((await nc.request(s.JOB_SUBMIT, b'{"name": "x", "request_id": "k-2"}', timeout=5)).data)
    assert c["job_id"] == d["job_id"] != a["job_id"]
    # the header wins over the body's request_id
    e = json.loads(
        (
            await nc.request(
                s.JOB_SUBMIT, b'{"name": "x", "request_id": "k-2"}', timeout=5, headers={"Nats-Msg-Id": "k-1"}
            )
        ).data
    )
    assert e["job_id"] == a["job_id"]
    js = nc.jetstream()
    info = await js.stream_info(s.JOBS.name)
    assert info.state.messages == 2  # one job per key


BAD = [
    (b"", 400, None),
    (b"{not json", 400, None),
    (b"[1, 2, 3]", 400, None),
    (b'{"name": "x", "replicas": -1}', 400, "replicas"),
    (b'{"name": "x", "replicas": 100000}', 400, "replicas"),
    (b'{"name": "x", "resources": {"cpu": "lots"}}', 400, "resources.cpu"),
    (b'{"name": "x", "resources": {"memory_mb": 1e30}}', 400, "resources.memory_mb"),
    (b'{"name": "x", "colour": {"deep": [1, 2]}}', 400, "colour"),
    (b'{"name": "' + b"x" * 200_000 + b'"}', 400, "name"),
    (b'{"name": "' + b"x" * 300_000 + b'"}', 413, None),
]


@pytest.mark.parametrize(("raw", "code", "field"), BAD)
async def test_bad_input_gets_a_clear_error_and_the_gateway_keeps_serving(
    nc: Client, services: Spawn, raw: bytes, code: int, field: str | None
) -> None:
    await services("gateway")
    reply = await nc.request(s.JOB_SUBMIT, raw, timeout=5)
    assert reply.headers and reply.headers[s.ERROR_CODE_HEADER] == str(code)
    assert reply.headers[s.ERROR_HEADER]
    err = json.loads(reply.data)["error"]
    assert err["code"] == code and err["message"]
    assert err.get("field") == field
    ok = await nc.request(s.JOB_SUBMIT, DEMO, timeout=5)
    assert json.loads(ok.data)["state"] == "submitted"
    stats = json.loads((await nc.request("$SRV.STATS.gateway", b"", timeout=2)).data)
    submit = next(e for e in stats["endpoints"] if e["subject"] == s.JOB_SUBMIT)
    assert submit["num_requests"] == 2 and submit["num_errors"] == 1


async def test_legacy_body_is_placed_on_an_instance_type(nc: Client, services: Spawn, events) -> None:  # type: ignore[no-untyped-def]
    await services("gateway", "intake", "placement")
    decided = await events(s.PLACEMENT_DECIDED)
    raw = b'{"probability_definition": "gs://foo/bar", "initial_number_of_replicas": "2"}'
    job_id = json.loads((await nc.request(s.JOB_SUBMIT, raw, timeout=5)).data)["job_id"]
    d = await decided.wait(job_id)
    assert d["cluster"] == "dedicated"
    assert [a["instance_type"] for a in d["assignments"]] == ["t3.medium", "t3.medium"]


async def test_rejected_job_says_why(nc: Client, services: Spawn, events) -> None:  # type: ignore[no-untyped-def]
    await services("gateway", "intake")
    rejected = await events(s.JOB_REJECTED)
    job_id = json.loads((await nc.request(s.JOB_SUBMIT, b'{"name": "x", "technology": "cobol"}', timeout=5)).data)[
        "job_id"
    ]
    r = await rejected.wait(job_id)
    assert "cobol" in r["reason"] and r["field"] == "technology"


async def test_undecodable_event_is_dead_lettered_once_and_consumer_keeps_going(
    nc: Client, services: Spawn, events
) -> None:  # type: ignore[no-untyped-def]
    await services("gateway", "intake")
    dead = await events(s.DEADLETTER_ALL)
    accepted = await events(s.JOB_ACCEPTED)
    js = nc.jetstream()
    await js.publish(s.JOB_SUBMITTED, b"\x00garbage", headers={"Nats-Msg-Id": "poison-1"})
    job_id = json.loads((await nc.request(s.JOB_SUBMIT, DEMO, timeout=5)).data)["job_id"]
    await accepted.wait(job_id)
    letter = await dead.wait("")
    assert letter["service"] == "intake" and "undecodable" in letter["reason"]
    info = await js.stream_info(s.DEADLETTERS.name)
    assert info.state.messages == 1


async def test_an_overloaded_system_sheds_new_jobs_at_the_door(nc: Client, services: Spawn, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Above ``admission.max_backlog`` jobs waiting for intake or placement, a submit gets a
    503 and nothing is stored; below it, submits are stored as usual."""
    import asyncio

    from services.gateway.admission import QUEUES
    from services.runtime.streams import ensure_consumer, ensure_streams

    js = nc.jetstream()
    await ensure_streams(js)
    for spec in QUEUES:  # declared, but nobody consumes: every submitted job waits
        await ensure_consumer(js, spec)
    config = tmp_path / "scheduler.toml"
    config.write_text('technologies = ["docker"]\n[admission]\nmax_backlog = 3\ncheck_interval_s = 0.05\n')
    await services("gateway", env={"SCHEDULER_CONFIG": str(config)})

    async def submit(i: int) -> tuple[str | None, dict]:  # type: ignore[type-arg]
        reply = await nc.request(
            s.JOB_SUBMIT, json.dumps({"name": f"j{i}", "request_id": f"r{i}"}).encode(), timeout=10
        )
        return (reply.headers or {}).get(s.ERROR_CODE_HEADER), json.loads(reply.data)

    stored = 0
    for i in range(4):  # the backlog is at most 3 when each of these arrives
        code, _ = await submit(i)
        assert code is None
        stored += 1
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # until the gateway's poll has seen the backlog of 4
        code, body = await submit(stored)
        if code is not None:
            break
        stored += 1
        assert asyncio.get_running_loop().time() < deadline, "never shed"
    assert code == "503" and "overloaded" in body["error"]["message"], body
    info = await js.stream_info(s.JOBS.name)
    assert info.state.messages == stored  # the refused job was not stored
