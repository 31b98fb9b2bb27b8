"""Request and reply bodies of the request-reply endpoints, and the error body."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.events import Assignment, Candidate
from schemas.jobs import JobSpec
from schemas.types import JobId, JobState, Outcome, ShortText


class _Inbound(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class SubmitReply(msgspec.Struct, kw_only=True):
    job_id: str
    state: JobState


class JobRef(_Inbound):
    job_id: JobId


class CompleteRequest(_Inbound):
    job_id: JobId
    outcome: Outcome
    message: ShortText | None = None


class ListRequest(_Inbound):
    state: JobState | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    after: Annotated[str, Meta(max_length=512)] | None = None


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: int
    message: str
    field: str | None = None
    job_id: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail


# --- metadata: job.get / job.list / job.events / node.list ------------------
class NodeListRequest(_Inbound):
    """Body of ``node.list``: no fields yet (an empty body is accepted too)."""


class Transition(msgspec.Struct, kw_only=True):
    state: str
    at: datetime


class InstanceRecord(msgspec.Struct, kw_only=True):
    instance_id: str
    instance_type: str
    replica: int
    state: str
    private_ip: str | None = None


class PlacementRecord(msgspec.Struct, kw_only=True):
    """The ``placement.decided`` event's assignments and candidates."""

    assignments: list[Assignment]
    candidates: list[Candidate]


class JobRecord(msgspec.Struct, kw_only=True):
    """The job record of ``job.get`` and the items of ``job.list``."""

    job_id: str
    state: str
    reason: str | None
    spec: JobSpec | None
    """The normalised JobSpec; null only while job.submitted/accepted has not been projected yet."""
    placement: PlacementRecord | None
    instances: list[InstanceRecord]
    submitted_at: datetime | None
    updated_at: datetime | None
    history: list[Transition]


class JobListReply(msgspec.Struct, kw_only=True):
    jobs: list[JobRecord]
    next: str | None
    """Opaque cursor for the next page (``after``), or null on the last page."""


class JobEventsReply(msgspec.Struct, kw_only=True):
    events: list[msgspec.Raw]
    """The job's events as published, oldest first."""


class Reserved(msgspec.Struct, kw_only=True):
    cpu: float = 0.0
    memory_mb: int = 0
    gpu: int = 0
    replicas: int = 0


class NodeRecord(msgspec.Struct, kw_only=True):
    """An item of ``node.list``: the last status, whether it is active, and what is reserved on it."""

    node_id: str
    state: str
    active: bool
    at: datetime
    technologies: list[str]
    labels: dict[str, str]
    cpu_cores: float
    cpu_free: float
    memory_mb: int
    memory_free_mb: int
    gpus: int
    reserved: Reserved


class NodeListReply(msgspec.Struct, kw_only=True):
    nodes: list[NodeRecord]
