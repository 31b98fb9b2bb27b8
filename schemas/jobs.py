"""The JobSpec: what a client submits, and the normalised form events carry.

``JobRequest`` is the inbound body of ``job.submit``/``placement.request``: unknown
fields are forbidden so typos fail, and every optional field left out is filled in
from configuration by :func:`normalise`, which yields the ``JobSpec`` stored in
events. ``LegacyJobRequest`` is the old sampling scheduler's body
(``{"probability_definition": ..., "initial_number_of_replicas": "2"}``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.types import (
    Cluster,
    Cpu,
    Gpu,
    Inbound,
    LabelKey,
    LabelValue,
    MemoryMb,
    Name,
    NodeId,
    PreemptionPolicy,
    Priority,
    Replicas,
    RequestId,
    RuntimeS,
    ShortText,
    Strategy,
    Technology,
)


class Resources(msgspec.Struct, kw_only=True, frozen=True):
    """Per-replica resources of a normalised spec."""

    cpu: float
    memory_mb: int
    gpu: int = 0


class ResourcesRequest(Inbound):
    cpu: Cpu | None = None
    memory_mb: MemoryMb | None = None
    gpu: Gpu = 0


class Near(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Only nodes within ``max_km`` (great-circle) of ``(lat, lon)`` qualify (§8.5)."""

    lat: Annotated[float, Meta(ge=-90, le=90)]
    lon: Annotated[float, Meta(ge=-180, le=180)]
    max_km: Annotated[float, Meta(gt=0, le=20_038)]


class Constraints(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    labels: Annotated[dict[LabelKey, LabelValue], Meta(max_length=64)] = {}
    nodes: Annotated[list[NodeId], Meta(max_length=10_000)] = []
    spread: bool = False
    spread_by: LabelKey | None = None
    """Spread the replicas evenly over the values of this node label (max skew 1, §8.5)."""
    near: Near | None = None


class Workload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    image: Annotated[str, Meta(max_length=1024)] | None = None
    probability_definition: Annotated[str, Meta(max_length=4096)] | None = None
    args: Annotated[list[ShortText], Meta(max_length=256)] = []


class JobRequest(Inbound):
    """Body of ``job.submit``; fields left out take configured defaults."""

    name: Name
    technology: Technology | None = None
    replicas: Replicas | None = None
    resources: ResourcesRequest = msgspec.field(default_factory=ResourcesRequest)
    constraints: Constraints = msgspec.field(default_factory=Constraints)
    cluster: Cluster = "shared"
    workload: Workload = msgspec.field(default_factory=Workload)
    max_runtime_s: RuntimeS | None = None
    strategy: Strategy | None = None
    priority: Priority = 0
    request_id: RequestId | None = None
    preemption: PreemptionPolicy = "lower_priority"

    def __post_init__(self) -> None:
        if self.strategy == "nearest" and self.constraints.near is None:
            raise ValueError("strategy 'nearest' needs constraints.near")


class LegacyJobRequest(Inbound):
    """The old sampling scheduler's body: a dedicated job with default resources."""

    probability_definition: Annotated[str, Meta(min_length=1, max_length=4096)]
    initial_number_of_replicas: Replicas = 1
    request_id: RequestId | None = None


class JobSpec(msgspec.Struct, kw_only=True, frozen=True):
    """The normalised spec carried by events: every default filled in."""

    name: str
    technology: str
    replicas: int
    resources: Resources
    constraints: Constraints
    cluster: Cluster
    workload: Workload
    strategy: Strategy
    max_runtime_s: int | None = None
    priority: int = 0
    preemption: PreemptionPolicy = "lower_priority"


class Defaults(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Configured defaults for fields a client leaves out."""

    technology: Technology = "docker"
    replicas: Replicas = 1
    cpu: Cpu = 1.0
    memory_mb: MemoryMb = 1024
    strategy: Strategy = "best_fit"
    max_runtime_s: RuntimeS | None = None


def normalise(req: JobRequest | LegacyJobRequest, defaults: Defaults) -> JobSpec:
    """Turn a request body (new or legacy) into the JobSpec events carry."""
    if isinstance(req, LegacyJobRequest):
        return JobSpec(
            name="resaas",
            technology=defaults.technology,
            replicas=req.initial_number_of_replicas,
            resources=Resources(cpu=defaults.cpu, memory_mb=defaults.memory_mb),
            constraints=Constraints(),
            cluster="dedicated",
            workload=Workload(probability_definition=req.probability_definition),
            strategy=defaults.strategy,
            max_runtime_s=defaults.max_runtime_s,
        )
    r = req.resources
    return JobSpec(
        name=req.name,
        technology=req.technology or defaults.technology,
        replicas=req.replicas or defaults.replicas,
        resources=Resources(
            cpu=r.cpu if r.cpu is not None else defaults.cpu,
            memory_mb=r.memory_mb if r.memory_mb is not None else defaults.memory_mb,
            gpu=r.gpu,
        ),
        constraints=req.constraints,
        cluster=req.cluster,
        workload=req.workload,
        strategy=req.strategy or defaults.strategy,
        max_runtime_s=req.max_runtime_s if req.max_runtime_s is not None else defaults.max_runtime_s,
        priority=req.priority,
        preemption=req.preemption,
    )


_job_decoder = msgspec.json.Decoder(JobRequest)
_legacy_decoder = msgspec.json.Decoder(LegacyJobRequest, strict=False)
_LEGACY_KEYS = (b'"initial_number_of_replicas"', b'"probability_definition"')


def decode_job_request(body: bytes) -> JobRequest | LegacyJobRequest:
    """Decode a submit body; raises ``msgspec.DecodeError`` (incl. ``ValidationError``).

    The legacy body is recognised by its keys when it is not a valid JobRequest,
    and decoded non-strictly so ``"2"`` becomes 2.
    """
    try:
        return _job_decoder.decode(body)
    except msgspec.ValidationError:
        if b'"name"' not in body and any(k in body for k in _LEGACY_KEYS):
            return _legacy_decoder.decode(body)
        raise
