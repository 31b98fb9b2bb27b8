"""Job specs, job events and node statuses for tests: built, published to the streams, and collected."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Constraints, JobSpec, Resources, Workload

SPEC = JobSpec(
    name="demo",
    technology="docker",
    replicas=2,
    resources=Resources(cpu=1.5, memory_mb=512),
    constraints=Constraints(),
    cluster="shared",
    workload=Workload(),
    strategy="best_fit",
)
"""A shared docker job of 2 replicas of 1.5 cpu and 512 MB."""

SMALL_SPEC = msgspec.structs.replace(SPEC, name="x", replicas=1, resources=Resources(cpu=1, memory_mb=1))
"""A shared docker job of 1 replica of 1 cpu and 1 MB."""


def small_submitted(job_id: str) -> ev.JobSubmitted:
    """``job.submitted`` of a ``SMALL_SPEC`` job."""
    return ev.JobSubmitted(event_id=ev.event_id_for(job_id, s.JOB_SUBMITTED), job_id=job_id, spec=SMALL_SPEC)


def submissions_consumer(durable: str, **options: Any) -> s.ConsumerSpec:
    """A test's durable on JOBS' ``job.submitted``, acks due within 5 s (``options``: the spec's others)."""
    return s.ConsumerSpec(
        stream=s.JOBS.name,
        durable=durable,
        filter_subjects=(s.JOB_SUBMITTED,),
        description="test",
        ack_wait_s=5.0,
        **options,
    )


def lifecycle(job_id: str, at: datetime, nodes: tuple[str, str] = ("n1", "n2")) -> list[ev.JobEvent]:
    """submitted, accepted, placement.decided of one shared job of 2 replicas."""
    return [
        ev.JobSubmitted(event_id=f"{job_id}:job.submitted", job_id=job_id, at=at, spec=SPEC),
        ev.JobAccepted(
            event_id=f"{job_id}:job.accepted",
            job_id=job_id,
            at=at + timedelta(milliseconds=5),
            spec=SPEC,
            submitted_at=at,
        ),
        ev.PlacementDecided(
            event_id=f"{job_id}:placement.decided",
            job_id=job_id,
            at=at + timedelta(milliseconds=10),
            cluster="shared",
            technology="docker",
            strategy="best_fit",
            assignments=[ev.Assignment(replica=0, node_id=nodes[0]), ev.Assignment(replica=1, node_id=nodes[1])],
            candidates=[ev.Candidate(node_id=n, cpu_free=8.0, memory_free_mb=16384) for n in nodes],
            resources=SPEC.resources,
        ),
    ]


def decided(job_id: str, **fields: Any) -> ev.PlacementDecided:
    """Revision 1 of a shared docker best-fit job's ``placement.decided``, without assignments, unless
    ``fields`` (any of the event's) say otherwise."""
    defaults: dict[str, Any] = {
        "event_id": ev.event_id_for(job_id, s.PLACEMENT_DECIDED),
        "cluster": "shared",
        "technology": "docker",
        "strategy": "best_fit",
        "assignments": [],
        "candidates": [],
    }
    return ev.PlacementDecided(job_id=job_id, **{**defaults, **fields})


def assigned(nodes: dict[int, str]) -> list[ev.Assignment]:
    """Replica r on node ``nodes[r]``, in replica order."""
    return [ev.Assignment(replica=r, node_id=n) for r, n in sorted(nodes.items())]


def spec_revision(
    job_id: str, revision: int, nodes: dict[int, str], *, at: datetime, changes: list[ev.Change] | None = None
) -> ev.PlacementDecided:
    """Revision ``revision`` of a job of ``SPEC`` (two replicas) decided at ``at``, replica r on ``nodes[r]``."""
    return decided(
        job_id,
        event_id=ev.revision_event_id(job_id, s.PLACEMENT_DECIDED, revision),
        at=at,
        assignments=assigned(nodes),
        resources=SPEC.resources,
        revision=revision,
        changes=changes or [],
        replicas=SPEC.replicas,
    )


def node_status(node_id: str, at: datetime, cpu_free: float = 8.0) -> ev.NodeStatus:
    """An active docker node of 8 cores and 16 GB in zone a, reported at ``at``."""
    return ev.NodeStatus(
        node_id=node_id,
        at=at,
        state="active",
        technologies=["docker"],
        cpu_cores=8,
        cpu_free=cpu_free,
        memory_mb=16384,
        memory_free_mb=16000,
        labels={"zone": "a"},
    )


ZONES = ("a", "b", "c", "d")


def fleet_status(i: int, now: datetime) -> ev.NodeStatus:
    """Node ``i`` of the fleet: every 50th draining, every 97th down, every 31st active but stale."""
    state = "down" if i % 97 == 0 else "draining" if i % 50 == 0 else "active"
    at = now - timedelta(hours=1) if i % 31 == 0 else now
    return ev.NodeStatus(
        node_id=f"node-{i:06d}",
        at=at,
        state=state,  # type: ignore[arg-type]
        technologies=["docker"],
        cpu_cores=8,
        cpu_free=float(i % 9),
        memory_mb=16384,
        memory_free_mb=1024 * (i % 17),
        gpus=i % 3,
        labels={"zone": ZONES[i % 4], "rack": f"r{i % 40}"},
    )


async def publish_nodes(nc: Client, count: int = 5, cpu: float = 8.0) -> None:
    """``count`` active docker nodes ``n0``, ``n1``, ... in zone a, node i with ``cpu - i`` cores free."""
    js = nc.jetstream()
    for i in range(count):
        st = ev.NodeStatus(
            node_id=f"n{i}",
            state="active",
            technologies=["docker"],
            cpu_cores=cpu,
            cpu_free=cpu - i,
            memory_mb=16384,
            memory_free_mb=16384,
            labels={"zone": "a"},
        )
        await js.publish(ev.subject_of(st), ev.encode(st))


def free_node(
    node_id: str,
    cpu: float = 8.0,
    *,
    state: str = "active",
    techs: tuple[str, ...] = ("docker",),
    memory_mb: int = 16384,
    **extra: Any,
) -> ev.NodeStatus:
    """The status of an idle node: all of its ``cpu`` cores and ``memory_mb`` free; ``extra``
    sets other fields (``labels``, ``location``, ``at``)."""
    return ev.NodeStatus(
        node_id=node_id,
        state=state,  # type: ignore[arg-type]
        technologies=list(techs),
        cpu_cores=cpu,
        cpu_free=cpu,
        memory_mb=memory_mb,
        memory_free_mb=memory_mb,
        **extra,
    )


async def node(
    nc: Client, node_id: str, cpu: float, *, state: str = "active", techs: tuple[str, ...] = ("docker",)
) -> None:
    """Publish the status of one node with all of its ``cpu`` cores free."""
    st = free_node(node_id, cpu, state=state, techs=techs)
    await nc.jetstream().publish(ev.subject_of(st), ev.encode(st))


async def publish(js: JetStreamContext, events: Sequence[ev.Event], *, redeliver: bool = False) -> None:
    """Publish events (pipelined). ``redeliver``: a fresh ``Nats-Msg-Id``, so the stream keeps the copy and
    the projection sees the same ``event_id`` twice, as after a redelivery."""
    futures = []
    for e in events:
        msg_id = f"{e.event_id or ev.subject_of(e)}:{uuid.uuid4().hex if redeliver else ''}"
        futures.append(await js.publish_async(ev.commit_subject_of(e), ev.encode(e), headers={s.MSG_ID_HEADER: msg_id}))
    await asyncio.gather(*futures)


class Events:
    """A core subscription collecting events by job id, to wait on an event itself."""

    def __init__(self) -> None:
        self.by_job: dict[str, list[dict[str, Any]]] = {}
        self._changed = asyncio.Condition()

    async def cb(self, msg: Any) -> None:
        data = json.loads(msg.data)
        async with self._changed:
            self.by_job.setdefault(data.get("job_id", ""), []).append(data)
            self._changed.notify_all()

    async def wait(self, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: job_id in self.by_job), timeout)
            return self.by_job[job_id][0]

    async def wait_many(self, job_id: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The first ``count`` events of the job, once that many arrived."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.by_job.get(job_id, [])) >= count), timeout)
            return self.by_job[job_id][:count]
