"""Gateway ``job.cancel`` / ``job.complete`` on shared jobs: 404, 409, idempotent repeats, and
teardown releasing the reservation exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from schemas import subjects as s
from tests.support.api import DEMO, request, submit
from tests.support.config import aws_env, write_config
from tests.support.events import publish_nodes
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration


async def test_unknown_job_is_404_and_bad_input_400(nc: Client, services: Spawn) -> None:
    await services("gateway")
    for subject, body in (
        (s.JOB_CANCEL, {"job_id": "nope"}),
        (s.JOB_COMPLETE, {"job_id": "nope", "outcome": "failed"}),
    ):
        code, reply = await request(nc, subject, body)
        assert code == 404 and reply["error"]["code"] == 404
    code, reply = await request(nc, s.JOB_COMPLETE, {"job_id": "x", "outcome": "maybe"})
    assert code == 400 and reply["error"]["field"] == "outcome"
    code, reply = await request(nc, s.JOB_CANCEL, {"job_id": "x", "extra": 1})
    assert code == 400


async def test_complete_a_placed_job_releases_it_once_and_repeats_are_idempotent(
    nc: Client, services: Spawn, events
) -> None:  # type: ignore[no-untyped-def]
    await services("gateway", "intake", "placement", "teardown")
    await publish_nodes(nc)
    decided = await events(s.PLACEMENT_DECIDED)
    released = await events(s.PLACEMENT_RELEASED)
    job_id = await submit(nc, DEMO)
    await decided.wait(job_id)
    done = {"job_id": job_id, "outcome": "succeeded", "message": "all good"}
    assert await request(nc, s.JOB_COMPLETE, done) == (200, {"job_id": job_id, "state": "succeeded"})
    assert await request(nc, s.JOB_COMPLETE, done) == (200, {"job_id": job_id, "state": "succeeded"})
    r = await released.wait(job_id)
    assert r["reason"] == "succeeded"
    code, _ = await request(nc, s.JOB_COMPLETE, {"job_id": job_id, "outcome": "failed"})
    assert code == 409
    code, _ = await request(nc, s.JOB_CANCEL, {"job_id": job_id})
    assert code == 409
    js = nc.jetstream()
    assert (await js.stream_info(s.PLACEMENTS.name)).state.messages == 2  # decided + released once
    assert len(released.by_job[job_id]) == 1


async def test_cancel_right_after_submit_then_cancelled_once_released(
    nc: Client, services: Spawn, events, ec2_endpoint: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # no intake ran, so teardown has no record of the job: it releases it without asking EC2
    await services("gateway", "teardown", env=aws_env(ec2_endpoint, write_config(tmp_path)))
    released = await events(s.PLACEMENT_RELEASED)
    job_id = await submit(nc, DEMO)
    assert await request(nc, s.JOB_CANCEL, {"job_id": job_id}) == (200, {"job_id": job_id, "state": "cancelling"})
    assert (await released.wait(job_id))["reason"] == "cancelled"
    assert await request(nc, s.JOB_CANCEL, {"job_id": job_id}) == (200, {"job_id": job_id, "state": "cancelled"})
    code, body = await request(nc, s.JOB_COMPLETE, {"job_id": job_id, "outcome": "succeeded"})
    assert code == 409 and "cancelled" in body["error"]["message"]
    js = nc.jetstream()
    assert (await js.stream_info(s.JOBS.name)).state.messages == 2  # submitted + one cancel_requested


async def test_a_second_gateway_knows_jobs_submitted_through_the_first(nc: Client, services: Spawn) -> None:
    await services("gateway")
    await services("gateway")
    ids = [await submit(nc, json.dumps({"name": f"j{i}"}).encode()) for i in range(10)]
    for job_id in ids:  # whichever instance answers, none says 404
        code, body = await request(nc, s.JOB_CANCEL, {"job_id": job_id})
        assert (code, body["state"]) == (200, "cancelling")
