"""Resizing a dedicated job end to end (§8.3): gateway, intake, placement, provisioner and
teardown as real processes against moto. A job of 2 replicas is scaled to 4, then to 1, with the
instances counted through the EC2 API after each step; cancelled, none is left."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import subjects as s
from tests.support.api import request, submit
from tests.support.ec2 import TAG, instances
from tests.support.events import Events

pytestmark = pytest.mark.integration


async def provisioned_at(provisioned: Events, job_id: str, revision: int) -> dict[str, Any]:
    """The job's ``cluster.provisioned`` of ``revision`` (the first launch has none: 1)."""
    for count in range(1, 10):
        got = await provisioned.wait_many(job_id, count, timeout=60)
        if (got[-1].get("revision") or 1) == revision:
            return got[-1]
    raise AssertionError(f"no cluster.provisioned of revision {revision}")


async def running(endpoint: str, job_id: str) -> list[tuple[str, str]]:
    """(replica, instance id) of the job's running instances, as EC2 lists them."""
    live = await instances(endpoint, job_id, ["pending", "running"])
    return sorted((i["tags"][f"{TAG}:replica"], i["InstanceId"]) for i in live)


@pytest.mark.usefixtures("dedicated_path")
async def test_a_dedicated_job_scaled_2_4_1_then_cancelled(
    nc: Client, events: Callable[..., Awaitable[Events]], ec2_endpoint: str
) -> None:
    provisioned = await events(s.CLUSTER_PROVISIONED)
    decided = await events(s.PLACEMENT_DECIDED)
    torn_down = await events(s.CLUSTER_TORN_DOWN)
    job_id = await submit(nc)  # legacy body: dedicated, 2 replicas

    first = await provisioned_at(provisioned, job_id, 1)
    before = await running(ec2_endpoint, job_id)
    assert [r for r, _ in before] == ["0", "1"]
    assert sorted(i["instance_id"] for i in first["instances"]) == sorted(i for _, i in before)

    assert await request(nc, s.JOB_SCALE, {"job_id": job_id, "replicas": 4}) == (
        200,
        {"job_id": job_id, "replicas": 4, "state": "scale_requested"},
    )
    grown = await provisioned_at(provisioned, job_id, 2)
    (_, rev2) = await decided.wait_many(job_id, 2, timeout=30)
    assert rev2["revision"] == 2 and rev2["replicas"] == 4
    assert {c["reason"] for c in rev2["changes"]} == {"scale"}
    after = await running(ec2_endpoint, job_id)
    assert [r for r, _ in after] == ["0", "1", "2", "3"]
    assert after[:2] == before  # the first two kept their instances
    assert sorted(i["instance_id"] for i in grown["instances"]) == sorted(i for _, i in after)

    assert (await request(nc, s.JOB_SCALE, {"job_id": job_id, "replicas": 1}))[0] == 200
    shrunk = await provisioned_at(provisioned, job_id, 3)
    assert await running(ec2_endpoint, job_id) == before[:1]
    assert [i["replica"] for i in shrunk["instances"]] == [0]

    assert (await request(nc, s.JOB_CANCEL, {"job_id": job_id}))[0] == 200
    td = await torn_down.wait(job_id, timeout=30)
    assert before[0][1] in td["instance_ids"]
    assert await running(ec2_endpoint, job_id) == []
    assert len(torn_down.by_job[job_id]) == 1


@pytest.mark.usefixtures("dedicated_path")
async def test_scaling_an_ended_dedicated_job_is_409(
    nc: Client, events: Callable[..., Awaitable[Events]], ec2_endpoint: str
) -> None:
    provisioned = await events(s.CLUSTER_PROVISIONED)
    released = await events(s.PLACEMENT_RELEASED)
    job_id = await submit(nc)
    await provisioned.wait(job_id, timeout=60)
    assert (await request(nc, s.JOB_CANCEL, {"job_id": job_id}))[0] == 200
    await released.wait(job_id, timeout=30)
    code, body = await request(nc, s.JOB_SCALE, {"job_id": job_id, "replicas": 3})
    assert code == 409 and body["error"]["job_id"] == job_id
    assert await running(ec2_endpoint, job_id) == []
