"""Thin aioboto3 adapter over the EC2 calls we use; every error becomes :class:`AwsError`.

Used by the provisioner (launch, wait) and teardown (terminate, sweep, reap).
With ``AWS_ENDPOINT_URL`` set it talks to that endpoint (moto locally); without, to AWS
with the standard credential chain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aioboto3
import botocore.exceptions
from botocore.config import Config as BotoConfig

from services.cloud.errors import AwsError
from services.cloud.instances import LIVE_STATES, InstanceInfo, TagScheme
from services.runtime.config import AwsConf, Settings


def _wrap(e: Exception) -> AwsError:
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return AwsError(str(err.get("Code", "Unknown")), str(err.get("Message", "")), http_status=status)
    if isinstance(e, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return AwsError("AuthFailure", str(e))
    if isinstance(e, botocore.exceptions.BotoCoreError | OSError | TimeoutError):
        return AwsError("ConnectionError", repr(e))
    raise e


def _info(raw: dict[str, Any], tags: TagScheme) -> InstanceInfo:
    tag = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
    replica = tag.get(tags.replica_key)
    return InstanceInfo(
        instance_id=raw["InstanceId"],
        instance_type=raw.get("InstanceType", ""),
        state=raw.get("State", {}).get("Name", "unknown"),
        private_ip=raw.get("PrivateIpAddress"),
        job_id=tag.get(tags.job_key),
        replica=int(replica) if replica and replica.isdigit() else None,
        launch_time=raw.get("LaunchTime"),
        replaces=tag.get(tags.replaces_key),
    )


class Ec2:
    """The EC2 calls of a dedicated cluster's life: launch, look up by tag, describe, terminate."""

    def __init__(self, client: Any, conf: AwsConf) -> None:
        self._c = client
        self.conf = conf
        self.tags = TagScheme(conf.tag_prefix, conf.project)

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, conf: AwsConf) -> AsyncIterator[Ec2]:
        session = aioboto3.Session()
        boto_conf = BotoConfig(
            retries={"max_attempts": conf.max_attempts, "mode": "standard"}, connect_timeout=5, read_timeout=30
        )
        async with session.client(
            "ec2",
            region_name=conf.region or settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            config=boto_conf,
        ) as client:
            yield cls(client, conf)

    async def _call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await getattr(self._c, op)(**kwargs)
        except Exception as e:
            raise _wrap(e) from e
        return result

    async def launch(
        self, job_id: str, replica: int, instance_type: str, token: str, *, replaces: str | None = None
    ) -> InstanceInfo:
        """RunInstances for one replica, tagged at launch (so a crash never leaves it untagged);
        ``replaces``: the instance this one replaces (tagged too, so a retry finds it)."""
        c = self.conf
        tags = [{"Key": k, "Value": v} for k, v in self.tags.for_replica(job_id, replica, replaces).items()]
        kwargs: dict[str, Any] = {
            "ImageId": c.image_id,
            "InstanceType": instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": token,
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        if c.subnet_id:
            kwargs["SubnetId"] = c.subnet_id
        if c.security_group_ids:
            kwargs["SecurityGroupIds"] = list(c.security_group_ids)
        if c.key_name:
            kwargs["KeyName"] = c.key_name
        if c.instance_profile:
            key = "Arn" if c.instance_profile.startswith("arn:") else "Name"
            kwargs["IamInstanceProfile"] = {key: c.instance_profile}
        out = await self._call("run_instances", **kwargs)
        return _info(out["Instances"][0], self.tags)

    async def _describe(self, **kwargs: Any) -> list[InstanceInfo]:
        out: list[InstanceInfo] = []
        token: str | None = None
        while True:
            page = await self._call("describe_instances", **kwargs, **({"NextToken": token} if token else {}))
            out.extend(_info(i, self.tags) for r in page.get("Reservations", []) for i in r.get("Instances", []))
            token = page.get("NextToken")
            if not token:
                return out

    async def job_instances(self, job_id: str) -> list[InstanceInfo]:
        """The job's instances that still exist (pending, running, stopping, stopped)."""
        return await self._describe(
            Filters=[
                {"Name": f"tag:{self.tags.job_key}", "Values": [job_id]},
                {"Name": f"tag:{self.tags.project_key}", "Values": [self.tags.project]},
                {"Name": "instance-state-name", "Values": sorted(LIVE_STATES)},
            ]
        )

    async def project_instances(self, *, every_state: bool = False) -> list[InstanceInfo]:
        """Every live instance carrying our project tag (for the orphan reaper); ``every_state``:
        also those shutting down or terminated (EC2 lists those for about an hour; for healing)."""
        filters = [{"Name": f"tag:{self.tags.project_key}", "Values": [self.tags.project]}]
        if not every_state:
            filters.append({"Name": "instance-state-name", "Values": sorted(LIVE_STATES)})
        return await self._describe(Filters=filters)

    async def replacements(self, job_id: str, replaces: str) -> list[InstanceInfo]:
        """The instances (in any state) launched to replace instance ``replaces`` of the job."""
        return await self._describe(
            Filters=[
                {"Name": f"tag:{self.tags.project_key}", "Values": [self.tags.project]},
                {"Name": f"tag:{self.tags.job_key}", "Values": [job_id]},
                {"Name": f"tag:{self.tags.replaces_key}", "Values": [replaces]},
            ]
        )

    async def describe(self, instance_ids: Sequence[str]) -> list[InstanceInfo]:
        if not instance_ids:
            return []
        return await self._describe(InstanceIds=list(instance_ids))

    async def terminate(self, instance_ids: Iterable[str]) -> list[str]:
        """Terminate instances; idempotent (terminated or unknown ids are fine). Returns the ids sent."""
        ids = sorted(set(instance_ids))
        if not ids:
            return []
        try:
            await self._call("terminate_instances", InstanceIds=ids)
        except AwsError as e:
            if not e.code.startswith("InvalidInstanceID"):
                raise
            for one in ids:  # one unknown id fails the batch: go one by one
                try:
                    await self._call("terminate_instances", InstanceIds=[one])
                except AwsError as e1:
                    if not e1.code.startswith("InvalidInstanceID"):
                        raise
        return ids


__all__ = ["AwsError", "Ec2"]
