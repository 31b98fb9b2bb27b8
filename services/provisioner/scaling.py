"""Resizing a dedicated cluster (§8.3): each ``placement.decided`` revision of a dedicated job
after the first (reason ``scale``) launches the replicas it adds or terminates those it removes.

Every dedicated decision goes through :meth:`Revisions.on_decided`, which applies a job's
revisions one after another, each once, whichever provisioner instance gets it
(:func:`services.provisioner.domain.revision_step` on teardown's ``JOB_LIFECYCLE`` record):

- revision 1 is the first launch (:meth:`Provisioner.on_decided`), skipped once its
  ``cluster.provisioned`` is stored (a late redelivery must not undo a resize);
- revision *n* > 1 waits, holding the message with in-progress pings, until revision *n - 1* is
  provisioned and teardown has recorded revision *n* (its ``wanted`` count tells healing which
  replicas a shrink removes, before they are terminated); then, as at launch, it looks the job's
  live instances up by tag, launches the missing replicas (the assigned type, then the ranked
  ones), waits until they run, terminates the surplus (the highest replica numbers, and any
  duplicate), and publishes ``cluster.provisioned`` with ``revision`` = *n* and the job's
  complete current instance list (event id ``<job>:cluster.provisioned:<n>``).

A launch that fails for good (no capacity on any ranked type, a permanent EC2 error, retries
exhausted) does not end a running job: the revision is reported with the instances that run,
logged at error, and the job runs short of the count until the next resize.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass

import structlog

from schemas import events as ev
from schemas import subjects as s
from schemas.lifecycle import JobLifecycle
from services.cloud.errors import AwsError
from services.cloud.instances import InstanceInfo
from services.provisioner.domain import Step, plan_launch, revision_step
from services.provisioner.handlers import DeliveryPort, Provisioner, Sleep, event_instance, not_dedicated
from services.runtime.backoff import delay

log = structlog.get_logger()

Record = Callable[[str], Awaitable[JobLifecycle | None]]
WAIT_BASE_S, WAIT_CAP_S = 0.2, 2.0
"""The backoff between reads of the record while a revision waits for its turn."""


class NotYet(Exception):
    """The revision's turn did not come within the wait: the consumer naks and retries it."""


@dataclass(slots=True)
class Revisions:
    provisioner: Provisioner
    record: Record
    _: KW_ONLY
    wait_s: float
    sleep: Sleep = asyncio.sleep

    async def on_decided(self, event: ev.PlacementDecided, d: DeliveryPort) -> None:
        if not_dedicated(event):
            return
        blog = log.bind(job_id=event.job_id, event_id=event.event_id, revision=event.revision)
        match await self._turn(event, d):
            case Step.ENDED:
                blog.info("job ended; revision not applied")
            case Step.DONE:
                blog.info("revision already provisioned")
            case _ if event.revision <= 1:
                await self.provisioner.on_decided(event, d)
            case _:
                await self.resize(event, d, blog)

    async def _turn(self, event: ev.PlacementDecided, d: DeliveryPort) -> Step:
        waited, attempt = 0.0, 1
        while True:
            step = revision_step(await self.record(event.job_id), event.revision)
            if step is not Step.WAIT:
                return step
            if waited >= self.wait_s:
                raise NotYet(f"revision {event.revision} of {event.job_id} still waits for the one before")
            await d.in_progress()
            pause = delay(attempt, base=WAIT_BASE_S, cap=WAIT_CAP_S)
            await self.sleep(pause)
            waited, attempt = waited + pause, attempt + 1

    async def resize(self, event: ev.PlacementDecided, d: DeliveryPort, blog: structlog.stdlib.BoundLogger) -> None:
        p = self.provisioner
        plan = plan_launch(event.assignments, await p.ec2.job_instances(event.job_id))
        current = dict(plan.keep)
        launched: list[InstanceInfo] = []
        try:
            async for _, inst in p.launch_missing(event, plan.missing, d, blog):
                launched.append(inst)
            if launched:
                running = await p.wait_running([i.instance_id for i in launched], d)
                current.update({i.replica: i for i in running if i.replica is not None})
        except AwsError as e:
            if p.will_retry(e, d):
                blog.warning("transient EC2 error while resizing; will retry", code=e.code, error=e.message)
                raise
            blog.error("resize could not launch every replica", code=e.code, error=e.message, kind=e.kind.value)
            for i in await p.ec2.describe([i.instance_id for i in launched]) if launched else []:
                if i.state == "running" and i.replica is not None:
                    current[i.replica] = i
                else:
                    plan.extra.append(i)
        if plan.extra:
            blog.info("terminating removed replicas", instances={i.instance_id: i.replica for i in plan.extra})
            await p.ec2.terminate([i.instance_id for i in plan.extra])
        instances = [current[r] for r in sorted(current)]
        await p.publisher.publish(
            ev.ClusterProvisioned(
                event_id=ev.revision_event_id(event.job_id, s.CLUSTER_PROVISIONED, event.revision),
                job_id=event.job_id,
                instances=[event_instance(i) for i in instances],
                revision=event.revision,
            )
        )
        blog.info(
            "cluster resized",
            replicas=event.wanted,
            running=len(instances),
            launched=[i.instance_id for i in launched],
            terminated=[i.instance_id for i in plan.extra],
        )


__all__ = ["NotYet", "Revisions"]
