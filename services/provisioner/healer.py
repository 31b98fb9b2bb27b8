"""Healing (§8.2): an instance of a running dedicated job that stopped or terminated without the
scheduler asking is replaced by a new one of the same replica, exactly once.

Two halves, so that the work survives a crash and is done once whatever the number of instances:

1. **Check** (every ``timeouts.instance_check_s``, in each provisioner): one ``DescribeInstances``
   by the project tag (all states) against the running dedicated jobs of the ``JOB_LIFECYCLE``
   records (followed in memory) gives the lost instances (:func:`healing.lost_instances`). Each
   is *claimed* by publishing ``cluster.instance_lost`` on ``cluster.instance_lost.<instance_id>``
   with ``Nats-Expected-Last-Subject-Sequence: 0``: the stream stores it only if that subject
   holds nothing yet, so one claim per instance ever, whichever provisioner sees it and whenever
   (no duplicate window involved); a refused claim means someone already claimed it.
2. **Replace** (durable consumer ``provisioner-repairs``: each claim goes to one provisioner at
   a time, in-progress pings while it waits, redelivered after a crash): skip if the job ended;
   look the replacement up by its ``replaces`` tag (adopt a live one: a retry after a crash), else
   launch one tagged with job, replica and ``replaces`` (the type fallback of a launch: the lost
   instance's type, then the job's ranked types); wait until it runs; terminate the old
   instance; publish ``cluster.instance_replaced`` (deterministic event id): once it is
   stored, the replacement runs and the old instance is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Protocol

import nats.js.errors
import structlog
from nats.js import JetStreamContext

from schemas import events as ev
from schemas import subjects as s
from schemas.lifecycle import JobLifecycle
from services.cloud.errors import AwsError
from services.cloud.instances import InstanceInfo
from services.provisioner.handlers import DeliveryPort, Provisioner
from services.provisioner.healing import (
    LostInstance,
    lost_instances,
    plan_replacement,
    removed,
    replacement_token,
    replacement_types,
)
from services.runtime.backoff import sleep_unless

log = structlog.get_logger()

DIED = frozenset({"InstanceTerminated", "RunningTimeout"})
"""``wait_running`` errors after which the replacement is given up and another one launched."""
WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code when ``Nats-Expected-Last-Subject-Sequence`` does not hold."""


class HealEc2Port(Protocol):
    async def project_instances(self, *, every_state: bool = False) -> list[InstanceInfo]: ...
    async def replacements(self, job_id: str, replaces: str) -> list[InstanceInfo]: ...
    async def terminate(self, instance_ids: Sequence[str]) -> list[str]: ...


class ClaimPort(Protocol):
    async def claim(self, event: ev.ClusterInstanceLost) -> bool: ...


Record = Callable[[str], Awaitable[JobLifecycle | None]]


class StreamClaims:
    """Claims a lost instance by storing its ``cluster.instance_lost`` on the instance's own subject,
    expecting that subject to be empty: JetStream stores one claim per instance, ever."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def claim(self, event: ev.ClusterInstanceLost) -> bool:
        """True when this call stored the claim; False when the instance was claimed before."""
        headers = {s.MSG_ID_HEADER: event.event_id, s.EXPECTED_LAST_SUBJECT_SEQ_HEADER: "0"}
        try:
            ack = await self._js.publish(ev.subject_of(event), ev.encode(event), headers=headers)
        except nats.js.errors.APIError as e:
            if e.err_code == WRONG_LAST_SEQUENCE:
                return False
            raise
        return not ack.duplicate


def lost_event(lost: LostInstance) -> ev.ClusterInstanceLost:
    return ev.ClusterInstanceLost(
        event_id=f"{ev.event_id_for(lost.job_id, s.CLUSTER_INSTANCE_LOST)}:{lost.instance_id}",
        job_id=lost.job_id,
        replica=lost.replica,
        instance_id=lost.instance_id,
        state=lost.state,
        instance_type=lost.instance_type,
    )


def replaced_event_id(job_id: str, old_instance_id: str) -> str:
    return f"{ev.event_id_for(job_id, s.CLUSTER_INSTANCE_REPLACED)}:{old_instance_id}"


@dataclass(slots=True)
class Healer:
    """The check (:meth:`check_once`, :meth:`check_loop`) and the replacement (:meth:`on_lost`)."""

    provisioner: Provisioner
    ec2: HealEc2Port
    claims: ClaimPort
    record: Record
    _: KW_ONLY
    check_s: float
    running: dict[str, JobLifecycle] = field(default_factory=dict, init=False)
    """The running dedicated jobs' records (kept by ``JobRecords.follow``)."""

    # --- the check -------------------------------------------------------------
    async def check_once(self, records: Collection[JobLifecycle] | None = None) -> list[LostInstance]:
        """Find the lost instances and claim each; returns those this call claimed."""
        jobs = list(self.running.values()) if records is None else list(records)
        if not jobs:
            return []  # no running dedicated job: no EC2 call
        claimed: list[LostInstance] = []
        for lost in lost_instances(jobs, await self.ec2.project_instances(every_state=True)):
            if await self.claims.claim(lost_event(lost)):
                log.warning(
                    "instance lost; replacement claimed",
                    job_id=lost.job_id,
                    replica=lost.replica,
                    instance_id=lost.instance_id,
                    state=lost.state,
                )
                claimed.append(lost)
        return claimed

    async def check_loop(self, stop: asyncio.Event, caught_up: asyncio.Event) -> None:
        """Check every ``check_s`` once the records are replayed (before, a job not yet replayed
        would look like no job at all)."""
        while not await sleep_unless(stop, self.check_s):
            if not caught_up.is_set():
                continue
            try:
                await self.check_once()
            except Exception as e:  # EC2 or NATS away: the next check tries again
                log.warning("instance check failed", error=repr(e))

    # --- the replacement ---------------------------------------------------------
    async def on_lost(self, event: ev.ClusterInstanceLost, d: DeliveryPort) -> None:
        blog = log.bind(job_id=event.job_id, replica=event.replica, instance_id=event.instance_id)
        rec = await self.record(event.job_id)
        if rec is None or rec.end is not None or rec.released:
            blog.info("job ended; no replacement", end=rec.end if rec else None)
            return
        if removed(rec, event.replica):
            blog.info("replica removed by a resize; no replacement", wanted=rec.wanted)
            return
        plan = plan_replacement(await self.ec2.replacements(event.job_id, event.instance_id))
        if plan.extra:
            blog.warning("terminating earlier replacements", instances=[i.instance_id for i in plan.extra])
            await self.ec2.terminate([i.instance_id for i in plan.extra])
        new = plan.keep
        if new is None:
            types = replacement_types(event.instance_type, rec.instance_types)
            try:
                new = await self.provisioner.launch_one(
                    event.job_id,
                    event.replica,
                    types,
                    set(),
                    lambda t: replacement_token(event.job_id, event.replica, event.instance_id, t, plan.attempts),
                    blog,
                    replaces=event.instance_id,
                )
            except AwsError as e:  # retried with backoff for as long as it takes: never silently short
                blog.error("replacement not launched; will retry", code=e.code, error=e.message, kind=e.kind.value)
                raise
        else:
            blog.info("found the replacement of an earlier attempt", new_instance_id=new.instance_id)
        await d.in_progress()
        try:
            (running,) = await self.provisioner.wait_running([new.instance_id], d)
        except AwsError as e:
            if e.code in DIED:  # the next delivery launches another one (a new client token)
                blog.error("replacement died before running; will launch another", code=e.code, error=e.message)
                await self.ec2.terminate([new.instance_id])
            raise
        await self.ec2.terminate([event.instance_id])  # first: a stopped instance still costs its volume
        await self.provisioner.publisher.publish(
            ev.ClusterInstanceReplaced(
                event_id=replaced_event_id(event.job_id, event.instance_id),
                job_id=event.job_id,
                replica=event.replica,
                old_instance_id=event.instance_id,
                new_instance_id=running.instance_id,
                instance_type=running.instance_type,
                private_ip=running.private_ip,
            )
        )
        blog.info("instance replaced", new_instance_id=running.instance_id, instance_type=running.instance_type)


__all__ = ["Healer", "StreamClaims", "lost_event", "replaced_event_id"]
