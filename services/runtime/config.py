"""Typed configuration: one TOML file for policy, environment variables for endpoints.

The TOML file (``SCHEDULER_CONFIG``, else the packaged ``defaults.toml``) is decoded
straight into Structs with unknown fields forbidden, so a typo stops startup.
Endpoints and secrets come from the environment, with local-friendly defaults.
"""

from __future__ import annotations

import os
import socket
import tomllib
import uuid
from pathlib import Path
from typing import Annotated, Literal, dataclass_transform

import msgspec
from msgspec import Meta

from schemas.jobs import Defaults
from schemas.replies import Quota
from schemas.types import Technology, Tenant

_DEFAULTS_TOML = Path(__file__).with_name("defaults.toml")

PositiveS = Annotated[float, Meta(gt=0)]
NonNegS = Annotated[float, Meta(ge=0)]


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(msgspec.field,))
class _Conf(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of the config Structs: immutable, and a misspelt key stops startup (both inherited).

    msgspec applies ``kw_only`` to the fields a class itself defines, so each subclass says
    ``kw_only=True`` (fields with and without defaults then mix in any order); the
    ``dataclass_transform`` tells type checkers that subclasses are frozen and keyword-only."""


class Limits(_Conf, kw_only=True):
    max_replicas: int = 1000
    max_cpu: float = 256.0
    max_memory_mb: int = 2 * 1024 * 1024
    max_gpu: int = 16


class Timeouts(_Conf, kw_only=True):
    node_ttl_s: PositiveS = 15.0
    """A node whose last status is older than this is inactive."""
    placement_deadline_s: PositiveS = 30.0
    """A job that does not fit waits this long (from acceptance) before placement.failed."""
    placement_request_timeout_s: PositiveS = 5.0
    """How long ``placement.request`` waits for the decision before answering 504."""
    idempotency_window_s: PositiveS = 86400.0
    """The JOBS stream's duplicate window: how long a ``Nats-Msg-Id``/request_id is remembered."""
    node_lost_s: PositiveS = 30.0
    """A node silent this long (or reporting ``down``) is lost: its replicas are placed again
    elsewhere (reason ``node_lost``). Never below ``node_ttl_s``: a smaller value is raised to it
    (see :attr:`lost_after_s`), so raising the TTL alone never stops a service."""
    instance_check_s: PositiveS = 30.0
    """How often the instances of running dedicated jobs are checked against EC2 (by tag), so
    one stopped or terminated outside the scheduler is replaced."""

    @property
    def lost_after_s(self) -> float:
        """When a silent node is lost: ``node_lost_s``, at least the TTL."""
        return max(self.node_lost_s, self.node_ttl_s)


class PlacementConf(_Conf, kw_only=True):
    top_candidates: Annotated[int, Meta(ge=1, le=1000)] = 10
    preemption: bool = True
    """A job that fits nowhere may take room from shared jobs of strictly lower priority (§8.3);
    false turns preemption off for every job."""


class InstanceType(_Conf, kw_only=True):
    name: str
    vcpu: Annotated[float, Meta(gt=0)]
    memory_mb: Annotated[int, Meta(gt=0)]
    gpu: Annotated[int, Meta(ge=0)] = 0
    price_hourly: Annotated[float, Meta(ge=0)]


class AwsConf(_Conf, kw_only=True):
    """EC2 launch settings of dedicated clusters (credentials and endpoint come from the environment)."""

    region: str | None = None
    """EC2 region; None uses ``AWS_DEFAULT_REGION`` (default eu-central-1)."""
    image_id: str = "ami-12c6146b"
    subnet_id: str | None = None
    security_group_ids: list[str] = []
    key_name: str | None = None
    instance_profile: str | None = None
    """IAM instance profile name (or ARN when it starts with ``arn:``)."""
    project: str = "natsched"
    """Value of the project tag on everything we launch; the orphan reaper lists by it."""
    tag_prefix: str = "natsched"
    """Tag keys are ``<prefix>:project``, ``<prefix>:job-id``, ``<prefix>:replica``."""
    running_timeout_s: PositiveS = 300.0
    """How long a launch may take to reach ``running`` before provisioning fails."""
    ack_wait_s: PositiveS = 30.0
    """Ack wait of the provisioner's consumer: a crashed launch is retried after this."""
    max_attempts: Annotated[int, Meta(ge=1, le=10)] = 3
    """botocore attempts per call (standard retry mode) before an error reaches us."""


class LifecycleConf(_Conf, kw_only=True):
    """Teardown, expiry and the orphan reaper."""

    expiry_check_s: PositiveS = 1.0
    """How often due deadlines (``max_runtime_s``) are looked for."""
    reaper_interval_s: PositiveS = 60.0
    """How often instances carrying the project tag are listed."""
    orphan_grace_s: PositiveS = 300.0
    """An instance whose job is unknown (since launch) or ended this long ago is terminated."""
    state_sync_timeout_s: PositiveS = 3.0
    """How long the gateway waits for its job-state view to catch up with the streams."""


class AdmissionConf(_Conf, kw_only=True):
    """Load shedding by the gateway (services/gateway/admission.py)."""

    max_backlog: Annotated[int, Meta(ge=0)] = 5000
    """Refuse new jobs (503) while more than this many wait for intake or placement; 0: never."""
    check_interval_s: PositiveS = 0.25
    """How often the gateway reads that backlog from the consumers."""


class RetentionConf(_Conf, kw_only=True):
    """How long history is kept (issue #21): bounded disk and memory, restarts from snapshots.

    Live state never depends on these windows: every service that rebuilds state from a
    stream starts from its snapshot (``SNAPSHOTS``), written at least every ``snapshot_every_s``,
    and a live job's facts are in it however old they are."""

    events_max_age_s: PositiveS = 7 * 86400.0
    """Events of JOBS, PLACEMENTS, CLUSTERS, TENANT_PLACEMENTS and DEADLETTER older than this
    leave the streams (stream ``max_age``). At least ``timeouts.idempotency_window_s``."""
    stream_max_bytes: Annotated[int, Meta(ge=-1)] = 1024**3
    """Each of those streams' size cap (-1: none), with discard ``new``: a full stream refuses
    new events loudly (503 on submit) rather than silently dropping old ones."""
    snapshot_every_s: PositiveS = 60.0
    """A service that rebuilds state from streams writes its snapshot at least this often (when
    anything changed), so its restart replays at most this much tail."""
    snapshot_every_events: Annotated[int, Meta(ge=1)] = 100_000
    """... and also after this many events folded since the last one."""
    ended_keep_s: PositiveS = 3600.0
    """In-memory views (the gateway's job states, teardown's records) keep an ended job this long
    (answering 409 "already ended"), then forget it (404 after that, as metadata may say more)."""
    jobs_keep_s: PositiveS = 30 * 86400.0
    """PostgreSQL keeps an ended job (record, history, events) this long after it ended."""
    node_history_keep_s: PositiveS = 86400.0
    """PostgreSQL keeps node status history (downsampled) this long; current state is kept always."""
    cleanup_every_s: PositiveS = 300.0
    """How often PostgreSQL retention runs (in batches)."""


class MetadataConf(_Conf, kw_only=True):
    """The metadata service (PostgreSQL projection and queries)."""

    node_flush_s: PositiveS = 10.0
    """Node statuses are coalesced in memory (the newest per node) and written to PostgreSQL this
    often, one row per node per flush whatever the reporting rate (issue #23): ``node.list``'s
    figures may be this much behind a node's last report (its staleness threshold is
    ``timeouts.node_ttl_s`` plus this). Placement's own view is unaffected."""
    write_every_s: NonNegS = 0.05
    """The projection of events into PostgreSQL writes at most one transaction per this period
    (0: as often as it can): the events of a period go in one transaction, each job's row written
    once for all of them. ``job.get``/``job.list`` may be this much later to show an event
    (issue #23: at 175 jobs/s the projection committed 2.3 transactions per job)."""


class Config(_Conf, kw_only=True):
    technologies: list[Technology]
    defaults: Defaults = Defaults()
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    placement: PlacementConf = PlacementConf()
    instance_types: list[InstanceType] = []
    aws: AwsConf = AwsConf()
    lifecycle: LifecycleConf = LifecycleConf()
    admission: AdmissionConf = AdmissionConf()
    retention: RetentionConf = RetentionConf()
    metadata: MetadataConf = MetadataConf()
    tenants: dict[Tenant, Quota] = {}
    """``[tenants.<name>]``: each tenant's quota (§8.4; keys as ``schemas.replies.Quota``'s, absent is
    unlimited). A run-time ``quota.set`` replaces a tenant's for as long as it stands."""

    def __post_init__(self) -> None:
        if self.defaults.technology not in self.technologies:
            raise ValueError(f"defaults.technology {self.defaults.technology!r} is not in technologies")


def load_config(path: str | Path | None = None) -> Config:
    """Read the TOML config; raises ``msgspec.ValidationError`` naming the bad key."""
    path = Path(path or os.environ.get("SCHEDULER_CONFIG") or _DEFAULTS_TOML)
    with path.open("rb") as f:
        return msgspec.convert(tomllib.load(f), Config)


class Settings(_Conf, kw_only=True):
    """Endpoints, secrets and process settings, read from the environment."""

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    database_url: str | None = None
    aws_endpoint_url: str | None = None
    aws_region: str = "eu-central-1"
    log_format: Literal["json", "console"] = "json"
    log_level: str = "info"
    stream_replicas: int = 1
    instance_id: str = ""


def load_settings(env: dict[str, str] | None = None) -> Settings:
    e = os.environ if env is None else env
    return Settings(
        nats_url=e.get("NATS_URL", "nats://127.0.0.1:4222"),
        nats_user=e.get("NATS_USER") or None,
        nats_password=e.get("NATS_PASSWORD") or None,
        database_url=e.get("DATABASE_URL") or None,
        aws_endpoint_url=e.get("AWS_ENDPOINT_URL") or None,
        aws_region=e.get("AWS_DEFAULT_REGION", "eu-central-1"),
        log_format="console" if e.get("LOG_FORMAT") == "console" else "json",
        log_level=e.get("LOG_LEVEL", "info").lower(),
        stream_replicas=int(e.get("STREAM_REPLICAS", "1")),
        instance_id=e.get("INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
    )
