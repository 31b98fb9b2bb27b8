"""Every subject, stream and durable consumer name, defined once.

Requests are core NATS request-reply subjects served as NATS micro endpoints.
Events live in JetStream streams whose subjects are listed explicitly (no
``job.>`` wildcards), so no stream can capture a request subject: a ``nats req``
would otherwise get the stream's publish ack instead of the service's answer.
"""

from __future__ import annotations

import msgspec

# --- requests (core request-reply, NATS micro endpoints) -------------------
JOB_SUBMIT = "job.submit"
PLACEMENT_REQUEST = "placement.request"
JOB_CANCEL = "job.cancel"
JOB_COMPLETE = "job.complete"
JOB_GET = "job.get"
JOB_LIST = "job.list"
JOB_EVENTS = "job.events"
NODE_LIST = "node.list"
JOB_SCALE = "job.scale"
PLACEMENT_PLAN = "placement.plan"
NODE_DRAIN = "node.drain"
NODE_UNDRAIN = "node.undrain"
QUOTA_SET = "quota.set"
"""Operators only (the scheduler account's ``admin``): a tenant's quota, changed at run time (§8.4)."""
QUOTA_GET = "quota.get"
TENANT_USAGE = "tenant.usage"

REQUEST_SUBJECTS: tuple[str, ...] = (
    JOB_SUBMIT,
    PLACEMENT_REQUEST,
    JOB_CANCEL,
    JOB_COMPLETE,
    JOB_GET,
    JOB_LIST,
    JOB_EVENTS,
    NODE_LIST,
    NODE_DRAIN,
    NODE_UNDRAIN,
    JOB_SCALE,
    PLACEMENT_PLAN,
    QUOTA_SET,
    QUOTA_GET,
    TENANT_USAGE,
)

# --- reply inboxes (nats-py ``inbox_prefix``, nats.ws ``inboxPrefix``, nats CLI ``--inbox-prefix``) ---
DEFAULT_INBOX_PREFIX = "_INBOX"
"""The clients' default, kept by the ``manager`` (the stock nats CLI without credentials) and tenants."""
SERVICES_INBOX_PREFIX = "_INBOX_services"
"""The services' replies arrive under ``_INBOX_services.>``, the only inboxes their user may read
(nats.conf): no other role can read a service's replies, nor a service another role's."""
CONSOLE_INBOX_PREFIX = "_INBOX_console"
"""The browser console's inboxes (services/console hands it to the page's connect options)."""
MONITOR_INBOX_PREFIX = "_INBOX_monitor"
"""The monitor role's inboxes (``nats --user monitor ... --inbox-prefix _INBOX_monitor micro ls``)."""
ROLE_INBOX_PREFIXES: dict[str, str] = {
    "services": SERVICES_INBOX_PREFIX,
    "console": CONSOLE_INBOX_PREFIX,
    "monitor": MONITOR_INBOX_PREFIX,
}
"""The nats.conf users that read replies on inboxes of their own only; any other uses ``_INBOX``."""

# --- tenants (§8.4) ---------------------------------------------------------
DEFAULT_TENANT = "default"
"""The tenant of every request made inside the scheduler's own account (NATSCHED)."""
REQUEST_INFO_HEADER = "Nats-Request-Info"
"""Stamped by nats-server on a request crossing accounts: JSON whose ``acc`` is the caller's account."""
TENANT_REQUEST_PREFIX = "sched.tenant"
"""A tenant account imports ``sched.tenant.<request>`` under the plain name ``<request>``; only an
import reaches these subjects (no user of NATSCHED may publish them; ``services`` subscribe), so the
``Nats-Request-Info`` header on them is the server's, never a client's."""

TENANT_REQUESTS: tuple[str, ...] = (
    JOB_SUBMIT,
    PLACEMENT_REQUEST,
    JOB_CANCEL,
    JOB_COMPLETE,
    JOB_GET,
    JOB_LIST,
    JOB_EVENTS,
    JOB_SCALE,
    PLACEMENT_PLAN,
    QUOTA_GET,
    TENANT_USAGE,
)
"""The requests a tenant account imports (never node.*, quota.set: the fleet is the operators')."""


def tenant_request_subject(subject: str) -> str:
    """The subject on which the scheduler serves ``subject`` to tenants (``sched.tenant.job.submit``)."""
    return f"{TENANT_REQUEST_PREFIX}.{subject}"


def tenant_of_account(account: str) -> str:
    """A tenant's name is its NATS account's, lower-cased (account ``ACME`` is tenant ``acme``)."""
    return account.lower()


# --- events (JetStream) -----------------------------------------------------
JOB_SUBMITTED = "job.submitted"
JOB_ACCEPTED = "job.accepted"
JOB_REJECTED = "job.rejected"
JOB_CANCEL_REQUESTED = "job.cancel_requested"
JOB_COMPLETED = "job.completed"
JOB_EXPIRED = "job.expired"
JOB_SCALE_REQUESTED = "job.scale_requested"

PLACEMENT_DECIDED = "placement.decided"
PLACEMENT_FAILED = "placement.failed"
PLACEMENT_RELEASED = "placement.released"
PLACEMENT_DEGRADED = "placement.degraded"

CLUSTER_PROVISIONING = "cluster.provisioning"
CLUSTER_PROVISIONED = "cluster.provisioned"
CLUSTER_PROVISION_FAILED = "cluster.provision_failed"
CLUSTER_TEARDOWN_REQUESTED = "cluster.teardown_requested"
CLUSTER_TORN_DOWN = "cluster.torn_down"
CLUSTER_INSTANCE_REPLACED = "cluster.instance_replaced"
CLUSTER_INSTANCE_LOST = "cluster.instance_lost"
"""The event type of a dead instance's replacement claim; its subject is
``cluster.instance_lost.<instance_id>``, stored at most once per instance (see PROVISIONER_REPAIRS)."""
CLUSTER_INSTANCE_LOST_ALL = CLUSTER_INSTANCE_LOST + ".*"

NODE_STATUS = "node.status"
"""The event type of node status; its subject is ``node.status.<node_id>``."""
NODE_STATUS_ALL = NODE_STATUS + ".*"
NODE_DRAINING = "node.draining"
"""The event type of a node's drain state (a stored fact, last one per node kept); subject
``node.draining.<node_id>``. Written by placement when it answers ``node.drain``/``node.undrain``."""
NODE_DRAINING_ALL = NODE_DRAINING + ".*"

DEADLETTER = "deadletter"
"""The event type of dead letters; the subject is ``deadletter.<service>``."""
DEADLETTER_ALL = DEADLETTER + ".*"


def node_status_subject(node_id: str) -> str:
    return f"{NODE_STATUS}.{node_id}"


def node_draining_subject(node_id: str) -> str:
    return f"{NODE_DRAINING}.{node_id}"


def instance_lost_subject(instance_id: str) -> str:
    return f"{CLUSTER_INSTANCE_LOST}.{instance_id}"


def deadletter_subject(service: str) -> str:
    return f"{DEADLETTER}.{service}"


# --- headers ----------------------------------------------------------------
MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_LAST_SEQ_HEADER = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_MSG_ID_HEADER = "Nats-Expected-Last-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ_HEADER = "Nats-Expected-Last-Subject-Sequence"
BATCH_ID_HEADER = "Nats-Batch-Id"
BATCH_SEQUENCE_HEADER = "Nats-Batch-Sequence"
BATCH_COMMIT_HEADER = "Nats-Batch-Commit"
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"


# --- streams ----------------------------------------------------------------
class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subjects: tuple[str, ...]
    description: str
    max_msgs_per_subject: int = -1
    duplicate_window_s: float = 120.0
    max_age_s: float = 0.0
    """0 keeps messages until the stream's other limits apply."""
    max_bytes: int = -1
    """The stream's size cap (-1: none); see ``discard_new``."""
    discard_new: bool = False
    """At a limit, refuse new messages (an error to the publisher) instead of dropping the oldest."""
    capture: tuple[str, ...] = ()
    """What the stream listens on, when it differs from the subjects it stores (see COMMIT_PREFIX)."""
    transform: tuple[str, str] | None = None
    """Subject transform (source, destination) applied to captured messages before storing."""
    republish: tuple[str, str] | None = None
    """(source, destination): the server re-publishes each message on core NATS once stored."""
    atomic: bool = False
    """Accepts atomic batch publishes (all messages of a batch stored, or none; nats-server 2.12+)."""

    @property
    def listens_on(self) -> tuple[str, ...]:
        return self.capture or self.subjects


JOBS = StreamSpec(
    name="JOBS",
    subjects=(
        JOB_SUBMITTED,
        JOB_ACCEPTED,
        JOB_REJECTED,
        JOB_CANCEL_REQUESTED,
        JOB_COMPLETED,
        JOB_EXPIRED,
        JOB_SCALE_REQUESTED,
    ),
    description="Job lifecycle events; the duplicate window is the idempotency window of job.submit.",
    duplicate_window_s=24 * 3600.0,
)
COMMIT_PREFIX = "sched.commit"
"""Placement events are committed to PLACEMENTS under ``sched.commit.<subject>`` and stored
(subject transform) under their contract subject ``placement.*``; the server then re-publishes
each *stored* message on ``placement.*`` (stream RePublish) for core subscribers. So a Cluster
Manager listening on ``placement.decided`` sees every stored decision once and never a decision
the stream refused (optimistic concurrency between placement instances refuses some), even if
the publisher dies right after the commit; and nothing outside ``services`` may commit."""
PLACEMENTS = StreamSpec(
    name="PLACEMENTS",
    subjects=(PLACEMENT_DECIDED, PLACEMENT_FAILED, PLACEMENT_RELEASED, PLACEMENT_DEGRADED),
    description="Placement decisions and releases; the capacity ledger is rebuilt from it.",
    capture=(f"{COMMIT_PREFIX}.placement.*",),
    transform=(f"{COMMIT_PREFIX}.placement.*", "placement.{{wildcard(1)}}"),
    republish=("placement.*", "placement.{{wildcard(1)}}"),
    atomic=True,  # with replicas, placement commits each group of decisions as one atomic batch
)


def commit_subject(subject: str) -> str:
    """The subject to publish an event on so that it is stored (differs for PLACEMENTS)."""
    return f"{COMMIT_PREFIX}.{subject}" if subject in PLACEMENTS.subjects else subject


CLUSTERS = StreamSpec(
    name="CLUSTERS",
    subjects=(
        CLUSTER_PROVISIONING,
        CLUSTER_PROVISIONED,
        CLUSTER_PROVISION_FAILED,
        CLUSTER_TEARDOWN_REQUESTED,
        CLUSTER_TORN_DOWN,
        CLUSTER_INSTANCE_REPLACED,
        CLUSTER_INSTANCE_LOST_ALL,
    ),
    description="Dedicated clusters of cloud instances: provisioning and teardown.",
)
NODES = StreamSpec(
    name="NODES",
    subjects=(NODE_STATUS_ALL, NODE_DRAINING_ALL),
    description="Last status and last drain state of each node (one message kept per subject).",
    max_msgs_per_subject=1,
)
DEADLETTERS = StreamSpec(
    name="DEADLETTER",
    subjects=(DEADLETTER_ALL,),
    description="Events a service gave up on, with the reason.",
    max_age_s=30 * 24 * 3600.0,
)

TENANT_EVENT_PREFIX = "tenant"
RELAY_PREFIX = "sched.relay"
TENANT_PLACEMENTS = StreamSpec(
    name="TENANT_PLACEMENTS",
    subjects=(f"{TENANT_EVENT_PREFIX}.*.placement.*",),
    description="Each tenant's placement events (tenant.<tenant>.placement.*), relayed from PLACEMENTS.",
    capture=(f"{RELAY_PREFIX}.{TENANT_EVENT_PREFIX}.*.placement.*",),
    transform=(
        f"{RELAY_PREFIX}.{TENANT_EVENT_PREFIX}.*.placement.*",
        f"{TENANT_EVENT_PREFIX}.{{{{wildcard(1)}}}}.placement.{{{{wildcard(2)}}}}",
    ),
    republish=(
        f"{TENANT_EVENT_PREFIX}.*.placement.*",
        f"{TENANT_EVENT_PREFIX}.{{{{wildcard(1)}}}}.placement.{{{{wildcard(2)}}}}",
    ),
)
"""A tenant account imports ``tenant.<tenant>.placement.*`` as ``placement.*`` (core
subscribers see their own jobs' events only) and reads it at least once through its durable
:func:`tenant_cluster_manager`. Relayed like PLACEMENTS is committed: published on
``sched.relay.tenant.<t>.placement.<e>``, stored as ``tenant.<t>.placement.<e>`` and
re-published only once stored, so a relay retry is a duplicate nobody sees."""


def tenant_event_subject(tenant: str, subject: str) -> str:
    """Where a tenant's copy of placement event ``subject`` is stored (``tenant.acme.placement.decided``)."""
    return f"{TENANT_EVENT_PREFIX}.{tenant}.{subject}"


def tenant_relay_subject(tenant: str, subject: str) -> str:
    """The subject the relay publishes a tenant's copy on (captured by TENANT_PLACEMENTS)."""
    return f"{RELAY_PREFIX}.{tenant_event_subject(tenant, subject)}"


TENANT_JS_API_PREFIX = "$JS.natsched.API"
"""The JetStream API prefix a tenant uses (``nats --js-api-prefix``) to reach its durable:
its account imports ``$JS.API.CONSUMER.{INFO,MSG.NEXT}.TENANT_PLACEMENTS.cluster-manager-<t>``
under this prefix (a tenant account has no JetStream of its own, whose API would answer
the plain ``$JS.API`` first) and ``$JS.ACK.TENANT_PLACEMENTS.cluster-manager-<t>.>`` as is."""

STREAMS: tuple[StreamSpec, ...] = (JOBS, PLACEMENTS, CLUSTERS, NODES, DEADLETTERS, TENANT_PLACEMENTS)


# --- key-value buckets ------------------------------------------------------
class BucketSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    history: int = 1
    """Values kept per key (1: the current one only)."""


JOB_LIFECYCLE = BucketSpec(
    name="JOB_LIFECYCLE",
    description="Per-job lifecycle records kept by teardown",
)
"""Per-job lifecycle record (``schemas.lifecycle``: end state, release flag, deadline, instances),
keyed by job id; written by teardown only, read by the provisioner."""

SNAPSHOTS = BucketSpec(
    name="SNAPSHOTS",
    description="Compact snapshots of state rebuilt from streams (object store; two slots per owner)",
)
"""Object store (stream ``OBJ_SNAPSHOTS``): ``<owner>.a`` / ``<owner>.b``, written alternately by
``services.runtime.snapshots`` (placement's ledger, the gateway's view, ...), so a restart
folds a snapshot plus the tail after it instead of all history."""
SNAPSHOT_META = f"$O.{SNAPSHOTS.name}.M.>"
"""nats-server's object store: a snapshot's meta (``M.<base64url(name)>``), published after its chunks."""
SNAPSHOT_CHUNKS = f"$O.{SNAPSHOTS.name}.C.>"
"""... and its chunks (``C.<nuid>``), published first: a crash between the two leaves the slot as it was."""

QUOTAS = BucketSpec(
    name="QUOTAS",
    description="Tenant quotas set at run time (quota.set), over the TOML's [tenants.<name>]",
)
"""Key: tenant; value: ``schemas.replies.Quota`` (JSON). Written by placement's ``quota.set``,
watched by every placement instance."""


# --- durable consumers ------------------------------------------------------
class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    durable: str
    filter_subjects: tuple[str, ...]
    description: str
    max_deliver: int = 10
    ack_wait_s: float = 30.0
    max_ack_pending: int = 20_000
    backoff_s: tuple[float, ...] = ()
    """Redelivery delays after an ack timeout (len must be < max_deliver)."""


INTAKE_JOBS = ConsumerSpec(
    stream=JOBS.name,
    durable="intake",
    filter_subjects=(JOB_SUBMITTED,),
    description="intake: validates submitted jobs against policy",
)
PLACEMENT_JOBS = ConsumerSpec(
    stream=JOBS.name,
    durable="placement",
    filter_subjects=(JOB_ACCEPTED,),
    description="placement: accepted jobs waiting for a decision (pending jobs stay unacked here)",
    # A pending job is held unacked (with in-progress pings) until it is placed or its
    # deadline passes; after a crash it is redelivered once ack_wait has run out
    # (placement pings every ack_wait / 3, so a live instance keeps it).
    ack_wait_s=9.0,
    max_deliver=-1,
    max_ack_pending=50_000,
)

PLACEMENT_SCALES = ConsumerSpec(
    stream=JOBS.name,
    durable="placement-scales",
    filter_subjects=(JOB_SCALE_REQUESTED,),
    description="placement: job.scale requests made revisions (reason scale), one at a time in stream order",
    # One request in flight across every instance (max_ack_pending=1), consumed in order:
    # a job's requests apply in stream order and the latest wins, whichever instance takes
    # them. A request for a job not decided yet waits (in-progress pings) for its decision.
    ack_wait_s=9.0,
    max_deliver=-1,
    max_ack_pending=1,
)


PROVISIONER_DECISIONS = ConsumerSpec(
    stream=PLACEMENTS.name,
    durable="provisioner",
    filter_subjects=(PLACEMENT_DECIDED,),
    description="provisioner: launches a dedicated cluster per decided dedicated job",
    # Launching waits for the instances to run (bounded); in-progress pings keep the
    # message ours meanwhile, and a crash hands it back after ack_wait.
    ack_wait_s=30.0,
    max_deliver=8,
)
PROVISIONER_REPAIRS = ConsumerSpec(
    stream=CLUSTERS.name,
    durable="provisioner-repairs",
    filter_subjects=(CLUSTER_INSTANCE_LOST_ALL,),
    description="provisioner: replaces each lost instance of a running dedicated job (one claim per instance)",
    # A replacement waits for its instance to run (in-progress pings keep the claim ours); a
    # crash hands it back after ack_wait. Never given up: a running job must not stay short.
    ack_wait_s=30.0,
    max_deliver=-1,
)
TEARDOWN_JOBS = ConsumerSpec(
    stream=JOBS.name,
    durable="teardown-jobs",
    filter_subjects=(JOB_ACCEPTED, JOB_CANCEL_REQUESTED, JOB_COMPLETED, JOB_EXPIRED),
    description="teardown: job facts and end triggers (cancel, completion, expiry)",
)
TEARDOWN_PLACEMENTS = ConsumerSpec(
    stream=PLACEMENTS.name,
    durable="teardown-placements",
    filter_subjects=(PLACEMENT_DECIDED, PLACEMENT_FAILED),
    description="teardown: decisions (start of a shared job's runtime) and failures",
)
TEARDOWN_CLUSTERS = ConsumerSpec(
    stream=CLUSTERS.name,
    durable="teardown-clusters",
    filter_subjects=(CLUSTER_PROVISIONING, CLUSTER_PROVISIONED, CLUSTER_PROVISION_FAILED, CLUSTER_INSTANCE_REPLACED),
    description="teardown: launched instances (tracked for teardown) and failed provisioning",
)

CLUSTER_MANAGER = ConsumerSpec(
    stream=PLACEMENTS.name,
    durable="cluster-manager",
    filter_subjects=PLACEMENTS.subjects,
    description="the manager role's at-least-once reading of every placement event (§8.6)",
    max_deliver=-1,
)
"""Provisioned for the Cluster Manager (§8.6), not read by any service: the ``manager`` role may
read its info, pull and ack (``nats consumer next PLACEMENTS cluster-manager --ack``)."""

TENANT_RELAY = ConsumerSpec(
    stream=PLACEMENTS.name,
    durable="tenant-relay",
    filter_subjects=(PLACEMENT_DECIDED, PLACEMENT_FAILED, PLACEMENT_DEGRADED, PLACEMENT_RELEASED),
    description="gateway: relays each tenant job's placement events into TENANT_PLACEMENTS",
    max_deliver=-1,
)


def tenant_cluster_manager(tenant: str) -> ConsumerSpec:
    """The durable provisioned for tenant ``tenant``'s Cluster Manager (§8.6): its own events only."""
    return ConsumerSpec(
        stream=TENANT_PLACEMENTS.name,
        durable=f"cluster-manager-{tenant}",
        filter_subjects=(tenant_event_subject(tenant, "placement.*"),),
        description=f"tenant {tenant}'s Cluster Manager: its jobs' placement events, at least once (§8.6)",
        max_deliver=-1,
    )


# metadata: one durable named "metadata" on each stream it projects, so `nats consumer
# report <STREAM>` shows its lag. max_deliver=-1: a PostgreSQL outage must never make the
# server stop redelivering; the consumer itself dead-letters poison after a bounded number
# of deliveries, and holds (in-progress pings, no nak) while the database is down.
METADATA_DURABLE = "metadata"


def _metadata_consumer(stream: StreamSpec, projects: str, subjects: tuple[str, ...] = ()) -> ConsumerSpec:
    """The metadata durable on ``stream``: ``subjects`` (default every subject of it), ``projects`` said
    in its description."""
    return ConsumerSpec(
        stream=stream.name,
        durable=METADATA_DURABLE,
        filter_subjects=subjects or stream.subjects,
        description=f"metadata: projects {projects} into PostgreSQL",
        max_deliver=-1,
        max_ack_pending=50_000,
    )


METADATA_JOBS = _metadata_consumer(JOBS, "job lifecycle events")
METADATA_PLACEMENTS = _metadata_consumer(PLACEMENTS, "placement decisions and releases")
METADATA_CLUSTERS = _metadata_consumer(CLUSTERS, "dedicated-cluster events")
METADATA_NODES = _metadata_consumer(NODES, "node drain facts", (NODE_DRAINING_ALL,))
"""Drain facts only (rare, never to be lost). Statuses are state: metadata takes them on a core
subscription and writes them coalesced (``services/metadata/fleet.py``, issue #23). A durable created
with the former filter (both subjects) is updated to this one when metadata starts."""
METADATA_CONSUMERS: tuple[ConsumerSpec, ...] = (METADATA_JOBS, METADATA_PLACEMENTS, METADATA_CLUSTERS, METADATA_NODES)


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` is one token, a trailing ``>`` one or more."""
    p, t = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(t) > i
        if i >= len(t) or (tok != "*" and tok != t[i]):
            return False
    return len(p) == len(t)


def overlaps(a: str, b: str) -> bool:
    """Whether two subject patterns can match a common subject."""
    pa, pb = a.split("."), b.split(".")
    for i in range(max(len(pa), len(pb))):
        x = pa[i] if i < len(pa) else None
        y = pb[i] if i < len(pb) else None
        if x == ">" or y == ">":
            return (x is not None) and (y is not None)
        if x is None or y is None:
            return False
        if x != y and "*" not in (x, y):
            return False
    return True
