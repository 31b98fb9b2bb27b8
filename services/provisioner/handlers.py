"""The provisioner's handler: one ``placement.decided`` (dedicated) in, a running cluster out.

Steps, each safe to repeat after a crash or redelivery:

1. skip the job if teardown already recorded its end (cancelled before launch);
2. look the job's instances up *by tag* (moto ignores ``ClientToken``; real EC2 honours it,
   so both guard against a second cluster) and launch only the missing replicas, falling
   back along the ranked instance types on insufficient capacity;
3. publish ``cluster.provisioning`` with the instance ids, poll ``DescribeInstances`` with
   backoff (bounded by ``aws.running_timeout_s``), then ``cluster.provisioned``.

A permanent EC2 error (or running out of ranked types, or of retries) ends in
``cluster.provision_failed`` with the error code; teardown then terminates whatever was
launched and releases the job. Transient errors raise, so the consumer naks with backoff.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Protocol

import structlog

from schemas import events as ev
from schemas import subjects as s
from services.cloud.errors import AwsError, ErrorKind
from services.cloud.instances import InstanceInfo
from services.provisioner.domain import Progress, client_token, launch_progress, next_type, plan_launch, ranked_types
from services.runtime.backoff import delay
from services.runtime.config import AwsConf

log = structlog.get_logger()

POLL_BASE_S, POLL_FACTOR, POLL_CAP_S = 0.2, 1.6, 5.0
"""The backoff between ``DescribeInstances`` polls while waiting for ``running``."""


class Ec2Port(Protocol):
    async def launch(
        self, job_id: str, replica: int, instance_type: str, token: str, *, replaces: str | None = None
    ) -> InstanceInfo: ...
    async def job_instances(self, job_id: str) -> list[InstanceInfo]: ...
    async def describe(self, instance_ids: Sequence[str]) -> list[InstanceInfo]: ...
    async def terminate(self, instance_ids: Sequence[str]) -> list[str]: ...


class PublisherPort(Protocol):
    async def publish(self, event: ev.Event) -> object: ...


class DeliveryPort(Protocol):
    @property
    def num_delivered(self) -> int: ...
    async def in_progress(self) -> None: ...


JobEnded = Callable[[str], Awaitable[bool]]
Sleep = Callable[[float], Awaitable[None]]


def event_instance(i: InstanceInfo) -> ev.Instance:
    return ev.Instance(
        instance_id=i.instance_id,
        instance_type=i.instance_type,
        replica=i.replica if i.replica is not None else -1,
        state=i.state,
        private_ip=i.private_ip,
    )


def not_dedicated(event: ev.PlacementDecided) -> bool:
    """A decision the provisioner has nothing to do for (a shared job's)."""
    return event.cluster != "dedicated"


@dataclass(slots=True)
class Provisioner:
    ec2: Ec2Port
    publisher: PublisherPort
    job_ended: JobEnded
    conf: AwsConf
    _: KW_ONLY
    max_deliver: int
    sleep: Sleep = asyncio.sleep
    clock: Callable[[], float] = time.monotonic

    async def on_decided(self, event: ev.PlacementDecided, d: DeliveryPort) -> None:
        if not_dedicated(event):
            return
        blog = log.bind(job_id=event.job_id, event_id=event.event_id)
        if await self.job_ended(event.job_id):
            blog.info("job ended before its cluster was launched; not launching")
            return
        try:
            launched = await self._launch(event, d, blog)
            await self.publisher.publish(
                ev.ClusterProvisioning(
                    event_id=ev.event_id_for(event.job_id, s.CLUSTER_PROVISIONING),
                    job_id=event.job_id,
                    instances=[event_instance(i) for i in launched],
                )
            )
            running = await self.wait_running([i.instance_id for i in launched], d)
        except AwsError as e:
            if self.will_retry(e, d):
                blog.warning("transient EC2 error; will retry", code=e.code, error=e.message)
                raise
            blog.error("provisioning failed", code=e.code, error=e.message, kind=e.kind.value)
            await self.publisher.publish(
                ev.ClusterProvisionFailed(
                    event_id=ev.event_id_for(event.job_id, s.CLUSTER_PROVISION_FAILED),
                    job_id=event.job_id,
                    error_code=e.code,
                    message=e.message[:2048],
                )
            )
            return
        await self.publisher.publish(
            ev.ClusterProvisioned(
                event_id=ev.event_id_for(event.job_id, s.CLUSTER_PROVISIONED),
                job_id=event.job_id,
                instances=[event_instance(i) for i in running],
            )
        )
        blog.info("cluster provisioned", instances=[i.instance_id for i in running])

    def will_retry(self, e: AwsError, d: DeliveryPort) -> bool:
        """Whether ``e`` is transient and the message has deliveries left (then the consumer naks it)."""
        last_try = self.max_deliver > 0 and d.num_delivered >= self.max_deliver
        return e.kind is ErrorKind.TRANSIENT and not last_try

    async def _launch(
        self, event: ev.PlacementDecided, d: DeliveryPort, blog: structlog.stdlib.BoundLogger
    ) -> list[InstanceInfo]:
        plan = plan_launch(event.assignments, await self.ec2.job_instances(event.job_id))
        if plan.keep:
            blog.info("found instances of an earlier attempt", replicas=sorted(plan.keep))
        if plan.extra:
            blog.warning("terminating surplus instances", instances=[i.instance_id for i in plan.extra])
            await self.ec2.terminate([i.instance_id for i in plan.extra])
        launched = dict(plan.keep)
        async for replica, inst in self.launch_missing(event, plan.missing, d, blog):
            launched[replica] = inst
        return [launched[r] for r in sorted(launched)]

    async def launch_missing(
        self,
        event: ev.PlacementDecided,
        missing: Sequence[ev.Assignment],
        d: DeliveryPort,
        blog: structlog.stdlib.BoundLogger,
    ) -> AsyncIterator[tuple[int, InstanceInfo]]:
        """Launch each of ``missing`` (on its assigned type, then the ranked ones), yielding each
        replica and its instance as it is launched, with an in-progress ping after each."""
        ranked = ranked_types(event.assignments, event.candidates)
        exhausted: set[str] = set()
        for a in missing:
            yield (
                a.replica,
                await self.launch_one(
                    event.job_id,
                    a.replica,
                    [t for t in [a.instance_type, *ranked] if t],
                    exhausted,
                    functools.partial(client_token, event.job_id, a.replica),
                    blog,
                ),
            )
            await d.in_progress()

    async def launch_one(
        self,
        job_id: str,
        replica: int,
        types: Sequence[str],
        exhausted: set[str],
        token: Callable[[str], str],
        blog: structlog.stdlib.BoundLogger,
        *,
        replaces: str | None = None,
    ) -> InstanceInfo:
        """Launch one replica on the first of ``types`` with capacity (types found without any
        are added to ``exhausted``, shared by the replicas of one launch)."""
        while True:
            itype = next_type(types, None, exhausted)
            if itype is None:
                raise AwsError(
                    "InsufficientInstanceCapacity",
                    f"no capacity for any ranked instance type ({', '.join(dict.fromkeys(types))})",
                )
            try:
                inst = await self.ec2.launch(job_id, replica, itype, token(itype), replaces=replaces)
            except AwsError as e:
                if e.kind is not ErrorKind.CAPACITY:
                    raise
                blog.warning("no capacity for instance type; trying the next", instance_type=itype, code=e.code)
                exhausted.add(itype)
                continue
            blog.info("launched", replica=replica, instance_id=inst.instance_id, instance_type=itype, replaces=replaces)
            return inst

    async def wait_running(self, ids: Sequence[str], d: DeliveryPort) -> list[InstanceInfo]:
        """Poll until every instance runs (sorted by replica); ``AwsError`` when one stopped or
        terminated on the way (``InstanceTerminated``) or after ``aws.running_timeout_s``."""
        deadline = self.clock() + self.conf.running_timeout_s
        attempt = 1
        while True:
            try:
                found = await self.ec2.describe(ids)
            except AwsError as e:  # real EC2 is eventually consistent right after RunInstances
                if not e.code.startswith("InvalidInstanceID"):
                    raise
                found = []
            match launch_progress(found, len(ids)):
                case Progress.RUNNING:
                    return sorted(found, key=lambda i: (i.replica if i.replica is not None else -1, i.instance_id))
                case Progress.LOST:
                    lost = [f"{i.instance_id}={i.state}" for i in found if i.state != "running"]
                    raise AwsError("InstanceTerminated", f"instances stopped before running: {', '.join(lost)}")
                case Progress.WAITING:
                    pass
            if self.clock() >= deadline:
                raise AwsError("RunningTimeout", f"instances not running after {self.conf.running_timeout_s:g} s")
            await d.in_progress()
            await self.sleep(delay(attempt, base=POLL_BASE_S, factor=POLL_FACTOR, cap=POLL_CAP_S))
            attempt += 1


__all__ = ["Provisioner", "event_instance", "not_dedicated"]
