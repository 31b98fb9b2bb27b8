"""What the decider is asked: an accepted job to decide (:class:`Pending`), or a change of a
placed job (a re-placement or a ``job.scale``), each with the future its caller awaits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from schemas import events as ev
from services.runtime.delivery import Delivery

__all__ = ["Pending", "Request"]


@dataclass
class Pending:
    """An accepted job waiting for a decision, with the delivery to ack once it has one."""

    event: ev.JobAccepted
    delivery: Delivery
    deadline: float
    """On the monotonic clock: when it is tried a last time, with an explanation."""
    order: int
    """Submission order (the JOBS stream sequence), the tie-break after priority."""


@dataclass
class Request:
    pending: Pending | None
    """The accepted job to decide; None for a re-placement or a resize of ``job_id``."""
    job_id: str
    final: bool
    future: asyncio.Future[str]
    replicas: int | None = None
    """For a ``job.scale``: the job's new number of replicas."""

    def resolve(self, outcome: str) -> None:
        if not self.future.done():
            self.future.set_result(outcome)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)
