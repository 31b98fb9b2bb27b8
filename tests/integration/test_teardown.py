"""Expiry of max_runtime_s (across a teardown restart) and the orphan reaper, on the real EC2 API (moto)."""

from __future__ import annotations

import json
from pathlib import Path

import aioboto3
import pytest
from nats.aio.client import Client

from schemas import subjects as s
from tests.support.api import submit
from tests.support.config import PROJECT, aws_env, write_config
from tests.support.ec2 import LIVE, TAG, instances
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration


async def test_dedicated_job_expires_after_max_runtime_even_across_a_teardown_restart(
    nc: Client, services: Spawn, events, ec2_endpoint: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = aws_env(ec2_endpoint, write_config(tmp_path))
    await services("gateway", "intake", "placement", "provisioner", env=env)
    (td,) = await services("teardown", env=env)
    provisioned = await events(s.CLUSTER_PROVISIONED)
    expired = await events(s.JOB_EXPIRED)
    torn_down = await events(s.CLUSTER_TORN_DOWN)
    body = {"name": "short", "cluster": "dedicated", "replicas": 1, "max_runtime_s": 3}
    job_id = await submit(nc, json.dumps(body).encode())
    done = await provisioned.wait(job_id, timeout=30)
    td.stop()  # the deadline lives in the KV record, not in this process
    await services("teardown", env=env)
    e = await expired.wait(job_id, timeout=30)
    assert e["max_runtime_s"] == 3
    t = await torn_down.wait(job_id, timeout=20)
    assert t["instance_ids"] == [done["instances"][0]["instance_id"]] and t["reason"] == "expired"
    assert await instances(ec2_endpoint, job_id, LIVE) == []


async def test_reaper_terminates_a_project_instance_without_a_job_and_spares_others(
    nc: Client, services: Spawn, events, ec2_endpoint: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    session = aioboto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-central-1")
    async with session.client("ec2", endpoint_url=ec2_endpoint) as ec2:

        async def launch(tags: dict[str, str]) -> str:
            out = await ec2.run_instances(
                ImageId="ami-12c6146b",
                MinCount=1,
                MaxCount=1,
                InstanceType="t3.medium",
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
                ],
            )
            iid: str = out["Instances"][0]["InstanceId"]
            return iid

        ghost = await launch({f"{TAG}:project": PROJECT, f"{TAG}:job-id": "ghost-job"})
        foreign = await launch({"team": "someone-else", f"{TAG}:job-id": "ghost-job"})

        reaped = await events(s.CLUSTER_TORN_DOWN)
        config = write_config(tmp_path, reaper_interval_s=0.3, orphan_grace_s=0.5)
        await services("teardown", env=aws_env(ec2_endpoint, config))
        report = await reaped.wait("ghost-job", timeout=20)
        assert report["instance_ids"] == [ghost]
        assert report["reason"].startswith("orphan:")
        assert await instances(ec2_endpoint, "ghost-job", LIVE) == []
        out = await ec2.describe_instances(InstanceIds=[foreign])
        assert out["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"
