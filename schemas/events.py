"""Every event of the contract: a tagged union whose tag (``"type"``) is its subject.

Events do not forbid unknown fields, so older consumers skip fields added later.
Each carries ``event_id`` (published as ``Nats-Msg-Id`` so a retried publish is
deduplicated by the stream) and ``at`` (RFC 3339, UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas import subjects as s
from schemas.jobs import JobSpec, Resources
from schemas.types import LabelKey, LabelValue, NodeId, NodeState, Outcome, Technology


def utcnow() -> datetime:
    return datetime.now(UTC)


def event_id_for(job_id: str, event_type: str) -> str:
    """Deterministic id of a once-per-job event, so a re-published one is a duplicate."""
    return f"{job_id}:{event_type}"


class Event(msgspec.Struct, tag_field="type", kw_only=True):
    event_id: str
    at: datetime = msgspec.field(default_factory=utcnow)


class JobEvent(Event, kw_only=True):
    job_id: str


# --- JOBS -----------------------------------------------------------------
class JobSubmitted(JobEvent, tag=s.JOB_SUBMITTED, kw_only=True):
    spec: JobSpec
    idempotency_key: str | None = None


class JobAccepted(JobEvent, tag=s.JOB_ACCEPTED, kw_only=True):
    spec: JobSpec
    submitted_at: datetime | None = None


class JobRejected(JobEvent, tag=s.JOB_REJECTED, kw_only=True):
    reason: str
    field: str | None = None


class JobCancelRequested(JobEvent, tag=s.JOB_CANCEL_REQUESTED, kw_only=True):
    reason: str | None = None


class JobCompleted(JobEvent, tag=s.JOB_COMPLETED, kw_only=True):
    outcome: Outcome
    message: str | None = None


class JobExpired(JobEvent, tag=s.JOB_EXPIRED, kw_only=True):
    max_runtime_s: int | None = None


# --- PLACEMENTS -------------------------------------------------------------
class Assignment(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    replica: int
    node_id: str | None = None
    instance_type: str | None = None


class Candidate(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    node_id: str | None = None
    cpu_free: float | None = None
    memory_free_mb: int | None = None
    instance_type: str | None = None
    vcpu: float | None = None
    memory_mb: int | None = None
    gpu: int | None = None
    price_hourly: float | None = None


class Excluded(msgspec.Struct, kw_only=True):
    """Nodes excluded per filter, each counted under the first filter it fails."""

    inactive: int = 0
    technology: int = 0
    cpu: int = 0
    memory: int = 0
    gpu: int = 0
    labels: int = 0
    nodes: int = 0
    spread: int = 0


class PlacementDecided(JobEvent, tag=s.PLACEMENT_DECIDED, kw_only=True):
    cluster: str
    technology: str
    strategy: str
    assignments: list[Assignment]
    candidates: list[Candidate]
    resources: Resources | None = None
    """Per-replica request: with the assignments it is the reservation (ledger rebuild)."""
    max_runtime_s: int | msgspec.UnsetType | None = msgspec.UNSET
    """The job's runtime limit (null: none), counted from this decision for a shared job.
    Carried so a consumer of decisions needs no lookup of the job; absent in events written
    before it existed, which a consumer must treat as "unknown", not as "no limit"."""


class PlacementFailed(JobEvent, tag=s.PLACEMENT_FAILED, kw_only=True):
    reason: str
    nodes_total: int = 0
    excluded: Excluded = msgspec.field(default_factory=Excluded)


class PlacementReleased(JobEvent, tag=s.PLACEMENT_RELEASED, kw_only=True):
    reason: str | None = None


# --- CLUSTERS -------------------------------------------------------------
class Instance(msgspec.Struct, kw_only=True):
    instance_id: str
    instance_type: str
    replica: int
    state: str = "pending"
    private_ip: str | None = None


class ClusterProvisioning(JobEvent, tag=s.CLUSTER_PROVISIONING, kw_only=True):
    instances: list[Instance] = []


class ClusterProvisioned(JobEvent, tag=s.CLUSTER_PROVISIONED, kw_only=True):
    instances: list[Instance]


class ClusterProvisionFailed(JobEvent, tag=s.CLUSTER_PROVISION_FAILED, kw_only=True):
    error_code: str
    message: str


class ClusterTeardownRequested(JobEvent, tag=s.CLUSTER_TEARDOWN_REQUESTED, kw_only=True):
    reason: str | None = None


class ClusterTornDown(JobEvent, tag=s.CLUSTER_TORN_DOWN, kw_only=True):
    instance_ids: list[str] = []
    reason: str | None = None
    """Why: the job's end state (``cancelled``, ``succeeded``, ...) or ``orphan: ...`` from the reaper."""


# --- NODES ------------------------------------------------------------------
NonNegFloat = Annotated[float, Meta(ge=0, le=1e9)]
NonNegInt = Annotated[int, Meta(ge=0, le=2**53)]


class NodeStatus(Event, tag=s.NODE_STATUS, kw_only=True):
    """Published by node agents on ``node.status.<node_id>``; ``event_id`` is optional."""

    event_id: str = ""
    node_id: NodeId
    state: NodeState
    technologies: Annotated[list[Technology], Meta(max_length=64)] = []
    cpu_cores: NonNegFloat
    cpu_free: NonNegFloat
    memory_mb: NonNegInt
    memory_free_mb: NonNegInt
    gpus: Annotated[int, Meta(ge=0, le=1024)] = 0
    labels: Annotated[dict[LabelKey, LabelValue], Meta(max_length=64)] = {}


# --- DEADLETTER -------------------------------------------------------------
class DeadLetter(Event, tag=s.DEADLETTER, kw_only=True):
    service: str
    subject: str
    stream: str | None = None
    stream_seq: int | None = None
    num_delivered: int | None = None
    reason: str
    data: str
    """The original payload (decoded as UTF-8 with replacement, truncated)."""


JobEvents = JobSubmitted | JobAccepted | JobRejected | JobCancelRequested | JobCompleted | JobExpired
PlacementEvents = PlacementDecided | PlacementFailed | PlacementReleased
ClusterEvents = (
    ClusterProvisioning | ClusterProvisioned | ClusterProvisionFailed | ClusterTeardownRequested | ClusterTornDown
)
AnyEvent = JobEvents | PlacementEvents | ClusterEvents | NodeStatus | DeadLetter

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        JobSubmitted,
        JobAccepted,
        JobRejected,
        JobCancelRequested,
        JobCompleted,
        JobExpired,
        PlacementDecided,
        PlacementFailed,
        PlacementReleased,
        ClusterProvisioning,
        ClusterProvisioned,
        ClusterProvisionFailed,
        ClusterTeardownRequested,
        ClusterTornDown,
        NodeStatus,
        DeadLetter,
    )
}

encoder = msgspec.json.Encoder()
any_event_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    return encoder.encode(event)


def commit_subject_of(event: Event) -> str:
    """The subject to publish an event on so that its stream stores it (see ``subjects.COMMIT_PREFIX``)."""
    return s.commit_subject(subject_of(event))


def subject_of(event: Event) -> str:
    """The subject an event is published on (its tag, or per node for node status)."""
    if isinstance(event, NodeStatus):
        return s.node_status_subject(event.node_id)
    tag = event.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


__all__ = [
    "AnyEvent",
    "Assignment",
    "Candidate",
    "ClusterProvisionFailed",
    "ClusterProvisioned",
    "ClusterProvisioning",
    "ClusterTeardownRequested",
    "ClusterTornDown",
    "DeadLetter",
    "Event",
    "Excluded",
    "Instance",
    "JobAccepted",
    "JobCancelRequested",
    "JobCompleted",
    "JobEvent",
    "JobExpired",
    "JobRejected",
    "JobSubmitted",
    "NodeStatus",
    "PlacementDecided",
    "PlacementFailed",
    "PlacementReleased",
    "any_event_decoder",
    "encode",
    "event_id_for",
    "subject_of",
    "utcnow",
]
_ = (LabelKey, LabelValue)
