"""``job.scale`` at the gateway against a real nats-server: 400, 404, 409, the stored
``job.scale_requested``, idempotency by ``Nats-Msg-Id``, and the endpoint in ``nats micro info``."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from tests.support.api import DEMO, request, submit
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration


async def stored_requests(nc: Client, job_id: str) -> list[ev.JobScaleRequested]:
    """The job's stored ``job.scale_requested``, in stream order (JOBS is small here: read it all)."""
    js = nc.jetstream()
    last = (await js.stream_info(s.JOBS.name)).state.last_seq
    out: list[ev.JobScaleRequested] = []
    for seq in range(1, last + 1):
        msg = await js.get_msg(s.JOBS.name, seq)
        if msg.subject == s.JOB_SCALE_REQUESTED:
            e = msgspec.json.decode(msg.data or b"", type=ev.JobScaleRequested)
            if e.job_id == job_id:
                out.append(e)
    return out


async def test_bad_counts_are_400_naming_the_field(nc: Client, services: Spawn, tmp_path: Path) -> None:
    conf = tmp_path / "scheduler.toml"
    conf.write_text('technologies = ["docker"]\n[limits]\nmax_replicas = 8\n')
    await services("gateway", env={"SCHEDULER_CONFIG": str(conf)})
    job_id = await submit(nc, DEMO)
    for replicas in (0, -3, 1.5, "4", None, 1001):
        code, body = await request(nc, s.JOB_SCALE, {"job_id": job_id, "replicas": replicas})
        assert code == 400 and body["error"]["field"] == "replicas", (replicas, body)
    code, body = await request(nc, s.JOB_SCALE, {"job_id": job_id, "replicas": 9})
    assert code == 400 and body["error"]["field"] == "replicas" and "limit of 8" in body["error"]["message"]
    code, body = await request(nc, s.JOB_SCALE, {"job_id": job_id})
    assert code == 400
    assert await stored_requests(nc, job_id) == []


async def test_unknown_is_404_ended_is_409_live_is_stored(nc: Client, services: Spawn) -> None:
    await services("gateway")
    code, body = await request(nc, s.JOB_SCALE, {"job_id": "nope", "replicas": 2})
    assert code == 404 and body["error"]["job_id"] == "nope"
    job_id = await submit(nc, DEMO)
    reply = await request(nc, s.JOB_SCALE, {"job_id": job_id, "replicas": 4})
    assert reply == (200, {"job_id": job_id, "replicas": 4, "state": "scale_requested"})
    (stored,) = await stored_requests(nc, job_id)
    assert stored.replicas == 4 and stored.idempotency_key is None
    # the latest wins: a second request is stored too, not refused while the first applies
    assert (await request(nc, s.JOB_SCALE, {"job_id": job_id, "replicas": 1}))[0] == 200
    assert [e.replicas for e in await stored_requests(nc, job_id)] == [4, 1]
    assert (await request(nc, s.JOB_CANCEL, {"job_id": job_id}))[0] == 200
    code, body = await request(nc, s.JOB_SCALE, {"job_id": job_id, "replicas": 3})
    assert code == 409 and "cancelled" in body["error"]["message"]
    assert len(await stored_requests(nc, job_id)) == 2


async def test_the_same_key_stores_one_request_and_answers_the_first_count(nc: Client, services: Spawn) -> None:
    await services("gateway")
    job_id = await submit(nc, DEMO)
    body = json.dumps({"job_id": job_id, "replicas": 3}).encode()
    headers = {s.MSG_ID_HEADER: "scale-once"}
    first = await nc.request(s.JOB_SCALE, body, timeout=5, headers=headers)
    again = await nc.request(
        s.JOB_SCALE, json.dumps({"job_id": job_id, "replicas": 7}).encode(), timeout=5, headers=headers
    )
    assert (
        json.loads(first.data)
        == json.loads(again.data)
        == {
            "job_id": job_id,
            "replicas": 3,
            "state": "scale_requested",
        }
    )
    by_field = await request(nc, s.JOB_SCALE, {"job_id": job_id, "replicas": 5, "request_id": "rid"})
    assert await request(nc, s.JOB_SCALE, {"job_id": job_id, "replicas": 5, "request_id": "rid"}) == by_field
    stored = await stored_requests(nc, job_id)
    assert [(e.replicas, e.idempotency_key) for e in stored] == [(3, "scale-once"), (5, "rid")]


async def test_the_endpoint_is_listed_with_its_metadata(nc: Client, services: Spawn) -> None:
    await services("gateway")
    reply = await nc.request("$SRV.INFO.gateway", b"", timeout=5)
    endpoints = {e["name"]: e for e in json.loads(reply.data)["endpoints"]}
    assert endpoints["scale"]["subject"] == s.JOB_SCALE
    assert endpoints["scale"]["metadata"]["reply"] == "{job_id, replicas, state}"
