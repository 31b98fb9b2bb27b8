"""Every event of the contract: a tagged union whose tag (``"type"``) is its subject.

Events do not forbid unknown fields, so older consumers skip fields added later.
Each carries ``event_id`` (published as ``Nats-Msg-Id`` so a retried publish is
deduplicated by the stream) and ``at`` (RFC 3339, UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas import subjects as s
from schemas.jobs import Constraints, JobSpec, Resources
from schemas.types import LabelKey, LabelValue, NodeId, NodeState, Outcome, ShortText, Technology, Tenant


def utcnow() -> datetime:
    return datetime.now(UTC)


def event_id_for(job_id: str, event_type: str) -> str:
    """Deterministic id of a once-per-job event, so a re-published one is a duplicate."""
    return f"{job_id}:{event_type}"


def revision_event_id(job_id: str, event_type: str, revision: int) -> str:
    """Deterministic id of a once-per-revision event (``placement.decided`` revision 2 and on,
    ``placement.degraded``): two placement instances deciding the same revision of a job
    publish the same id, so the stream keeps one. Revision 1 keeps :func:`event_id_for`'s id."""
    base = event_id_for(job_id, event_type)
    return base if revision <= 1 and event_type == s.PLACEMENT_DECIDED else f"{base}:{revision}"


class Event(msgspec.Struct, tag_field="type", kw_only=True):
    event_id: str
    at: datetime = msgspec.field(default_factory=utcnow)


class JobEvent(Event, kw_only=True):
    job_id: str


# --- JOBS -----------------------------------------------------------------
class JobSubmitted(JobEvent, tag=s.JOB_SUBMITTED, kw_only=True):
    spec: JobSpec
    idempotency_key: str | None = None
    tenant: Tenant = s.DEFAULT_TENANT
    """The account it was submitted from (§8.4); ``default`` inside the scheduler's own."""


class JobAccepted(JobEvent, tag=s.JOB_ACCEPTED, kw_only=True):
    spec: JobSpec
    submitted_at: datetime | None = None
    tenant: Tenant = s.DEFAULT_TENANT
    """The account it was submitted from (§8.4); ``default`` inside the scheduler's own."""


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


class JobScaleRequested(JobEvent, tag=s.JOB_SCALE_REQUESTED, kw_only=True):
    """``job.scale`` stored (§8.3): the job should now run ``replicas`` replicas. Placement makes
    it a new revision (reason ``scale``); the latest request of a job wins."""

    replicas: int
    idempotency_key: str | None = None


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
    distance_km: float | None = None
    """Great-circle distance to the job's ``constraints.near`` (only when it is given)."""


class Excluded(msgspec.Struct, kw_only=True):
    """Nodes excluded per filter, each counted under the first filter it fails."""

    inactive: int = 0
    technology: int = 0
    cpu: int = 0
    memory: int = 0
    gpu: int = 0
    labels: int = 0
    nodes: int = 0
    distance: int = 0
    """No location, or farther than ``constraints.near.max_km``."""
    spread_by: int = 0
    """No value for the label of ``constraints.spread_by``."""
    spread: int = 0
    quota: int = 0
    """Every node, when the job's tenant is at a concurrent quota (§8.4): the job waits."""


ChangeReason = Literal["node_lost", "drain", "scale", "preempted"]


class Change(msgspec.Struct, kw_only=True, frozen=True):
    """One replica that moved between two revisions of a job's placement."""

    replica: int
    from_: str | None = msgspec.field(default=None, name="from")
    """The node it ran on (null: it had none, e.g. a replica placed again after being missing)."""
    to: str | None = None
    """The node it runs on now (null: it fits nowhere for now, see ``placement.degraded``)."""
    reason: ChangeReason
    by: str | None = None
    """For ``preempted``: the job that took the room."""


class Preempted(msgspec.Struct, kw_only=True, frozen=True):
    """A replica of a lower-priority job whose room a decision took."""

    job_id: str
    replica: int
    node_id: str


class PlacementDecided(JobEvent, tag=s.PLACEMENT_DECIDED, kw_only=True):
    cluster: str
    technology: str
    strategy: str
    assignments: list[Assignment]
    """The complete current assignments of this revision (a replica that fits nowhere for now
    is absent; ``placement.degraded`` of the same revision names it)."""
    candidates: list[Candidate]
    resources: Resources | None = None
    """Per-replica request: with the assignments it is the reservation (ledger rebuild)."""
    max_runtime_s: int | msgspec.UnsetType | None = msgspec.UNSET
    """The job's runtime limit (null: none), counted from this decision for a shared job.
    Carried so a consumer of decisions needs no lookup of the job; absent in events written
    before it existed, which a consumer must treat as "unknown", not as "no limit"."""
    revision: int = 1
    """1 for the first decision, +1 for each change of where the job's replicas run (§8.1).
    A consumer keeps the highest revision per job and ignores older ones."""
    changes: list[Change] = []
    """Which replicas moved since the previous revision, and why (empty on revision 1)."""
    replicas: int | None = None
    """The number of replicas the job wants (null in events written before it existed: as
    many as ``assignments``)."""
    constraints: Constraints | None = None
    """The job's constraints, so a replica can be placed again from PLACEMENTS alone."""
    priority: int = 0

    preempted: list[Preempted] = []
    """On the preempting job's decision: the replicas of lower-priority jobs it took room from
    (each moved or missing in a revision of its own job, reason ``preempted``, §8.3)."""
    tenant: Tenant = s.DEFAULT_TENANT
    """The job's tenant (§8.4): the relay copies the event to ``tenant.<tenant>.placement.*``."""

    @property
    def wanted(self) -> int:
        return self.replicas if self.replicas is not None else len(self.assignments)


class PlacementFailed(JobEvent, tag=s.PLACEMENT_FAILED, kw_only=True):
    reason: str
    nodes_total: int = 0
    excluded: Excluded = msgspec.field(default_factory=Excluded)
    tenant: Tenant = s.DEFAULT_TENANT
    """The job's tenant (§8.4): the relay copies the event to ``tenant.<tenant>.placement.*``."""


class PlacementReleased(JobEvent, tag=s.PLACEMENT_RELEASED, kw_only=True):
    reason: str | None = None
    tenant: Tenant = s.DEFAULT_TENANT
    """The job's tenant (§8.4): the relay copies the event to ``tenant.<tenant>.placement.*``."""


class PlacementDegraded(JobEvent, tag=s.PLACEMENT_DEGRADED, kw_only=True):
    """Replicas of a live job that must run but fit nowhere for now (§8.1): the job is
    ``degraded`` until a later revision places them; retried whenever capacity changes."""

    revision: int
    """The job's latest revision (the ``placement.decided`` that left these replicas out)."""
    missing: list[int]
    reason: str
    nodes_total: int = 0
    excluded: Excluded = msgspec.field(default_factory=Excluded)
    tenant: Tenant = s.DEFAULT_TENANT
    """The job's tenant (§8.4): the relay copies the event to ``tenant.<tenant>.placement.*``."""


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
    revision: int | None = None
    """The dedicated job's ``placement.decided`` revision these instances run (§8.3: a resize is
    a new revision; null on the first launch, i.e. revision 1). From revision 2 on, ``instances``
    is the job's complete current set: an instance listed before and not here was removed."""


class ClusterProvisionFailed(JobEvent, tag=s.CLUSTER_PROVISION_FAILED, kw_only=True):
    error_code: str
    message: str


class ClusterTeardownRequested(JobEvent, tag=s.CLUSTER_TEARDOWN_REQUESTED, kw_only=True):
    reason: str | None = None


class ClusterInstanceReplaced(JobEvent, tag=s.CLUSTER_INSTANCE_REPLACED, kw_only=True):
    """An instance of a running dedicated job stopped or terminated without the scheduler
    asking (spot reclaim, hardware fault) and a new one now runs that replica (§8.2)."""

    replica: int
    old_instance_id: str
    new_instance_id: str
    instance_type: str | None = None
    private_ip: str | None = None


class ClusterInstanceLost(JobEvent, tag=s.CLUSTER_INSTANCE_LOST, kw_only=True):
    """An instance of a running dedicated job found stopped, terminated or gone without the
    scheduler asking: the claim to replace it, stored on ``cluster.instance_lost.<instance_id>``
    at most once per instance (the provisioner publishes it expecting no earlier message on that
    subject), then handled by one provisioner (``cluster.instance_replaced`` follows)."""

    replica: int
    instance_id: str
    state: str
    """What EC2 said of it (``stopped``, ``terminated``, ...; ``missing``: no longer listed)."""
    instance_type: str | None = None


class ClusterTornDown(JobEvent, tag=s.CLUSTER_TORN_DOWN, kw_only=True):
    instance_ids: list[str] = []
    reason: str | None = None
    """Why: the job's end state (``cancelled``, ``succeeded``, ...) or ``orphan: ...`` from the reaper."""


# --- NODES ------------------------------------------------------------------
NonNegFloat = Annotated[float, Meta(ge=0, le=1e9)]
NonNegInt = Annotated[int, Meta(ge=0, le=2**53)]


class Location(msgspec.Struct, kw_only=True, frozen=True):
    lat: Annotated[float, Meta(ge=-90, le=90)]
    lon: Annotated[float, Meta(ge=-180, le=180)]


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
    location: Location | None = None
    """Where the node is (§8.5), for ``constraints.near`` and strategy ``nearest``."""


class NodeDraining(Event, tag=s.NODE_DRAINING, kw_only=True):
    """A node's drain state, stored on ``node.draining.<node_id>`` (the last one per node is
    kept): a draining node takes no new replicas and its replicas are moved (reason ``drain``)."""

    node_id: NodeId
    draining: bool
    reason: ShortText | None = None


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


JobEvents = (
    JobSubmitted | JobAccepted | JobRejected | JobCancelRequested | JobCompleted | JobExpired | JobScaleRequested
)
PlacementEvents = PlacementDecided | PlacementFailed | PlacementReleased | PlacementDegraded
ClusterEvents = (
    ClusterProvisioning
    | ClusterProvisioned
    | ClusterProvisionFailed
    | ClusterTeardownRequested
    | ClusterTornDown
    | ClusterInstanceReplaced
    | ClusterInstanceLost
)
NodeEvents = NodeStatus | NodeDraining
AnyEvent = JobEvents | PlacementEvents | ClusterEvents | NodeEvents | DeadLetter

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        JobSubmitted,
        JobAccepted,
        JobRejected,
        JobCancelRequested,
        JobCompleted,
        JobExpired,
        JobScaleRequested,
        PlacementDecided,
        PlacementFailed,
        PlacementReleased,
        PlacementDegraded,
        ClusterProvisioning,
        ClusterProvisioned,
        ClusterProvisionFailed,
        ClusterTeardownRequested,
        ClusterTornDown,
        ClusterInstanceReplaced,
        ClusterInstanceLost,
        NodeStatus,
        NodeDraining,
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
    if isinstance(event, NodeDraining):
        return s.node_draining_subject(event.node_id)
    if isinstance(event, ClusterInstanceLost):
        return s.instance_lost_subject(event.instance_id)
    tag = event.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


__all__ = [
    "AnyEvent",
    "Assignment",
    "Candidate",
    "Change",
    "ClusterInstanceLost",
    "ClusterInstanceReplaced",
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
    "JobScaleRequested",
    "JobSubmitted",
    "Location",
    "NodeDraining",
    "NodeStatus",
    "PlacementDecided",
    "PlacementDegraded",
    "PlacementFailed",
    "PlacementReleased",
    "Preempted",
    "any_event_decoder",
    "encode",
    "event_id_for",
    "revision_event_id",
    "subject_of",
    "utcnow",
]
_ = (LabelKey, LabelValue)
