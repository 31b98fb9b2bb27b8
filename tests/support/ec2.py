"""What the EC2 API (moto, asked directly) holds for the instances the tests' services launch."""

from __future__ import annotations

from typing import Any

import aioboto3

from tests.support.config import PROJECT

TAG = "natsched"
"""The prefix of the provisioner's instance tags (``natsched:project``, ``natsched:job-id``)."""
LIVE = ["pending", "running", "stopping", "stopped"]
"""Instance states that are not (being) terminated."""


async def instances(endpoint: str, job_id: str | None = None, states: list[str] | None = None) -> list[dict[str, Any]]:
    """What EC2 (moto, asked directly) holds for a job: each with its tags as a dict."""
    filters = [{"Name": f"tag:{TAG}:project", "Values": [PROJECT]}]
    if job_id:
        filters.append({"Name": f"tag:{TAG}:job-id", "Values": [job_id]})
    if states:
        filters.append({"Name": "instance-state-name", "Values": states})
    session = aioboto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-central-1")
    async with session.client("ec2", endpoint_url=endpoint) as ec2:
        out = await ec2.describe_instances(Filters=filters)
    found = [i for r in out["Reservations"] for i in r["Instances"]]
    for i in found:
        i["tags"] = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
    return found


async def _act(endpoint: str, op: str, ids: list[str]) -> None:
    session = aioboto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-central-1")
    async with session.client("ec2", endpoint_url=endpoint) as ec2:
        await getattr(ec2, op)(InstanceIds=ids)


async def stop(endpoint: str, ids: list[str]) -> None:
    """Stop instances through the EC2 API, as a spot reclaim or an operator outside the scheduler would."""
    await _act(endpoint, "stop_instances", ids)


async def terminate(endpoint: str, ids: list[str]) -> None:
    """Terminate instances through the EC2 API, outside the scheduler."""
    await _act(endpoint, "terminate_instances", ids)
