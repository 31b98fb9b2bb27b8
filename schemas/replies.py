"""Request and reply bodies of the request-reply endpoints, and the error body."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.events import Assignment, Candidate, Change, Excluded
from schemas.jobs import JobSpec
from schemas.types import Inbound as _Inbound
from schemas.types import JobId, JobState, NodeId, Outcome, Replicas, RequestId, ShortText, Tenant


class SubmitReply(msgspec.Struct, kw_only=True):
    job_id: str
    state: JobState


class JobRef(_Inbound):
    job_id: JobId


class CompleteRequest(_Inbound):
    job_id: JobId
    outcome: Outcome
    message: ShortText | None = None


Cursor = Annotated[str, Meta(max_length=1024)]
"""An opaque ``next`` cursor returned by a list reply, sent back as ``after``."""


class ListRequest(_Inbound):
    """Body of ``job.list``. ``limit`` is an upper bound: a page also stops before its reply would
    cross the byte budget (``count`` says how many it holds; ``next`` continues after the last)."""

    state: JobState | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    after: Annotated[str, Meta(max_length=512)] | None = None
    tenant: Tenant | None = None
    """Only this tenant's jobs. Inside the scheduler's account only (operators see every
    tenant); a tenant's own ``job.list`` lists its jobs whatever it sends here."""


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: int
    message: str
    field: str | None = None
    job_id: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail


# --- metadata: job.get / job.list / job.events / node.list ------------------
NodeFilterState = Literal["active", "inactive", "draining", "down"]
"""A node's listed state: as reported, except ``inactive`` for a node that reported ``active`` but whose
last status is older than the node TTL."""

Label = Annotated[str, Meta(min_length=2, max_length=400, pattern=r"^[A-Za-z0-9][A-Za-z0-9./_-]*=.*$")]
"""A label filter ``key=value`` (the value may be empty)."""


class NodeListRequest(_Inbound):
    """Body of ``node.list`` (an empty body is ``{}``): a page of nodes in ``node_id`` order, or with
    ``summary`` the fleet's counts and capacity in one small reply (filters apply to both)."""

    limit: Annotated[int, Meta(ge=1, le=5000)] = 500
    after: Cursor | None = None
    state: NodeFilterState | None = None
    label: Label | None = None
    summary: bool = False


class JobEventsRequest(_Inbound):
    """Body of ``job.events``: a page of the job's events, oldest first."""

    job_id: JobId
    limit: Annotated[int, Meta(ge=1, le=1000)] = 1000
    after: Cursor | None = None


class Transition(msgspec.Struct, kw_only=True):
    state: str
    at: datetime


class InstanceRecord(msgspec.Struct, kw_only=True):
    instance_id: str
    instance_type: str
    replica: int
    state: str
    private_ip: str | None = None


class Revision(msgspec.Struct, kw_only=True):
    """One revision of a job's placement: when, and which replicas moved why."""

    revision: int
    at: datetime
    changes: list[Change] = []


class PlacementRecord(msgspec.Struct, kw_only=True):
    """The latest ``placement.decided`` event's assignments and candidates (§8.1: the highest
    revision), the replicas it wants and those missing (``degraded``), and every revision."""

    assignments: list[Assignment]
    candidates: list[Candidate]
    revision: int = 1
    replicas: int | None = None
    """Replicas the job wants (null: as many as ``assignments``)."""
    missing: list[int] = []
    """Replicas that fit nowhere for now (the job is ``degraded``)."""
    degraded_reason: str | None = None
    revisions: list[Revision] = []
    """Every revision seen, oldest first, with its changes."""


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
    tenant: str = "default"
    """The account it was submitted from (§8.4)."""


class JobListReply(msgspec.Struct, kw_only=True):
    jobs: list[JobRecord]
    """Full job records (as ``job.get``), newest first."""
    next: str | None
    """Opaque cursor for the next page (``after``), or null on the last page."""
    count: int = 0
    """How many jobs this page holds (fewer than ``limit`` when the byte budget ended it)."""


class JobEventsReply(msgspec.Struct, kw_only=True):
    events: list[msgspec.Raw]
    """The job's events as published, oldest first."""
    next: str | None = None
    """Opaque cursor for the next page (``after``), or null on the last page."""
    count: int = 0
    """How many events this page holds."""


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
    draining: bool = False
    """Drained by ``node.drain`` (or reporting ``state: draining``): takes no new replicas."""


class NodeListReply(msgspec.Struct, kw_only=True):
    nodes: list[NodeRecord]
    """In ``node_id`` order."""
    next: str | None = None
    """Opaque cursor for the next page (``after``), or null on the last page."""
    count: int = 0
    """How many nodes this page holds (fewer than ``limit`` when the byte budget ended it)."""


class Capacity(msgspec.Struct, kw_only=True):
    cpu: float = 0.0
    memory_mb: int = 0
    gpu: int = 0


class NodeSummary(msgspec.Struct, kw_only=True):
    total: int
    """Nodes matching the filters."""
    states: dict[str, int]
    """Nodes per listed state (``active``, ``inactive``, ``draining``, ``down``), zero counts included."""
    capacity: Capacity
    """Allocatable capacity of the active nodes (``cpu_cores``, ``memory_mb``, ``gpus`` summed)."""
    free: Capacity
    """Free capacity of the active nodes, each counted as placement does:
    min(allocatable - reserved, reported free), never below 0 (gpu: allocatable - reserved)."""
    reserved: Reserved
    """Summed over unreleased placements on the matching nodes, whatever their state."""


class NodeSummaryReply(msgspec.Struct, kw_only=True):
    """The reply of ``node.list`` with ``summary: true``."""

    summary: NodeSummary


# --- placement: node.drain / node.undrain -------------------------------------
class NodeDrainRequest(_Inbound):
    """Body of ``node.drain``: the node takes no new replicas and its replicas are moved."""

    node_id: NodeId
    reason: ShortText | None = None


class NodeUndrainRequest(_Inbound):
    """Body of ``node.undrain``."""

    node_id: NodeId


class NodeDrainReply(msgspec.Struct, kw_only=True):
    node_id: str
    draining: bool


# --- gateway: job.scale ------------------------------------------------------
class ScaleRequest(_Inbound):
    """Body of ``job.scale``: run ``replicas`` replicas from now on (1 to the configured
    ``limits.max_replicas``). ``request_id`` (or the ``Nats-Msg-Id`` header) makes a retry idempotent."""

    job_id: JobId
    replicas: Replicas
    request_id: RequestId | None = None


class ScaleReply(msgspec.Struct, kw_only=True):
    job_id: str
    replicas: int
    state: str


# --- placement: placement.plan -----------------------------------------------
class PlanDecision(msgspec.Struct, kw_only=True):
    assignments: list[Assignment]
    candidates: list[Candidate]


class Preemption(msgspec.Struct, kw_only=True):
    """A replica of a lower-priority job that this decision would move or leave missing (§8.3)."""

    job_id: str
    replica: int
    node_id: str


class PlanFailure(msgspec.Struct, kw_only=True):
    reason: str
    nodes_total: int = 0
    excluded: Excluded = msgspec.field(default_factory=Excluded)


class PlanReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The reply of ``placement.plan``: what would be decided right now, booking nothing and
    storing nothing. Exactly one of ``decision`` and ``failure`` is set."""

    decision: PlanDecision | None = None
    failure: PlanFailure | None = None
    preemptions: list[Preemption] = []


# --- tenants and quotas (§8.4) ----------------------------------------------
NonNegative = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]


class Quota(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A tenant's limits; null (or absent) is unlimited. Concurrent: ``cpu``, ``memory_mb``,
    ``gpu`` (summed over the replicas of its running jobs), ``jobs`` (running jobs), ``instances``
    (dedicated instances); ``cpu_hours``: cores x hours per rolling 30 days."""

    cpu: NonNegative | None = None
    memory_mb: Count | None = None
    gpu: Count | None = None
    jobs: Count | None = None
    instances: Count | None = None
    cpu_hours: NonNegative | None = None


class QuotaSetRequest(_Inbound):
    """Body of ``quota.set`` (operators): the tenant's quota from now on, replacing the TOML's
    (every field given; absent or null is unlimited)."""

    tenant: Tenant
    quota: Quota


class QuotaRequest(_Inbound):
    """Body of ``quota.get`` and ``tenant.usage``. A tenant asks of itself (its own account,
    whatever ``tenant`` says, which may then only name itself); inside the scheduler's account
    ``tenant`` names any (default: ``default``)."""

    tenant: Tenant | None = None


class QuotaReply(msgspec.Struct, kw_only=True):
    tenant: str
    quota: Quota
    source: Literal["config", "runtime", "none"]
    """Where the quota comes from: the TOML's ``[tenants.<name>]``, ``quota.set``, or neither."""


class Usage(msgspec.Struct, kw_only=True):
    cpu: float = 0.0
    memory_mb: int = 0
    gpu: int = 0
    jobs: int = 0
    instances: int = 0
    cpu_hours: float = 0.0
    """Cores x hours used in the last 30 days, running jobs included up to now."""


class UsageReply(msgspec.Struct, kw_only=True):
    tenant: str
    usage: Usage
    quota: Quota
    at: datetime
