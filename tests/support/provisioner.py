"""Fakes of the provisioner's ports (EC2, publisher, delivery) for handler tests without NATS or AWS."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from schemas import events as ev
from services.cloud.errors import AwsError
from services.cloud.instances import InstanceInfo


class FakeEc2:
    """Instances in memory; a type in ``no_capacity``/``unsupported`` fails like EC2 would.

    A launched instance is ``pending`` until ``describe`` has been asked ``polls_pending`` times,
    then ``running``; ``die_on_launch``: that many launches come back stopped (died before running)."""

    def __init__(self, *, no_capacity: Sequence[str] = (), unsupported: Sequence[str] = (), polls_pending: int = 0):
        self.instances: dict[str, InstanceInfo] = {}
        self.no_capacity = set(no_capacity)
        self.unsupported = set(unsupported)
        self.polls_pending = polls_pending
        self.launch_calls: list[tuple[int, str]] = []
        self.tokens: list[str] = []
        self.terminated: list[str] = []
        self.transient_failures = 0
        self.die_on_launch = 0

    def add(self, info: InstanceInfo) -> InstanceInfo:
        self.instances[info.instance_id] = info
        return info

    def set_state(self, instance_id: str, state: str) -> None:
        self.instances[instance_id] = dataclasses.replace(self.instances[instance_id], state=state)

    async def launch(
        self, job_id: str, replica: int, instance_type: str, token: str, *, replaces: str | None = None
    ) -> InstanceInfo:
        self.launch_calls.append((replica, instance_type))
        self.tokens.append(token)
        if self.transient_failures:
            self.transient_failures -= 1
            raise AwsError("RequestLimitExceeded", "slow down", http_status=503)
        if instance_type in self.no_capacity:
            raise AwsError("InsufficientInstanceCapacity", "none left", http_status=500)
        if instance_type in self.unsupported:
            raise AwsError("Unsupported", "not here", http_status=400)
        iid = f"i-{len(self.instances):04d}"
        state = "pending"
        if self.die_on_launch:
            self.die_on_launch -= 1
            state = "stopped"
        i = InstanceInfo(iid, instance_type, state, f"10.0.0.{len(self.instances)}", job_id, replica, replaces=replaces)
        self.instances[iid] = i
        return i

    async def job_instances(self, job_id: str) -> list[InstanceInfo]:
        return [i for i in self.instances.values() if i.job_id == job_id and i.state in ("pending", "running")]

    async def project_instances(self, *, every_state: bool = False) -> list[InstanceInfo]:
        return [i for i in self.instances.values() if every_state or i.state not in ("shutting-down", "terminated")]

    async def replacements(self, job_id: str, replaces: str) -> list[InstanceInfo]:
        return [i for i in self.instances.values() if i.job_id == job_id and i.replaces == replaces]

    async def describe(self, instance_ids: Sequence[str]) -> list[InstanceInfo]:
        if self.polls_pending:
            self.polls_pending -= 1
        else:
            for iid in instance_ids:
                if self.instances[iid].state == "pending":
                    self.set_state(iid, "running")
        return [self.instances[i] for i in instance_ids]

    async def terminate(self, instance_ids: Sequence[str]) -> list[str]:
        self.terminated.extend(instance_ids)
        for iid in instance_ids:
            if iid in self.instances:
                self.set_state(iid, "terminated")
        return list(instance_ids)


class FakePublisher:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    async def publish(self, event: ev.Event) -> object:
        self.events.append(event)
        return None

    def types(self) -> list[str]:
        return [ev.subject_of(e) for e in self.events]


class FakeDelivery:
    def __init__(self, num_delivered: int = 1) -> None:
        self._n = num_delivered
        self.pings = 0

    @property
    def num_delivered(self) -> int:
        return self._n

    async def in_progress(self) -> None:
        self.pings += 1


async def no_sleep(_: float) -> None:
    return None


__all__ = ["FakeDelivery", "FakeEc2", "FakePublisher", "no_sleep"]
