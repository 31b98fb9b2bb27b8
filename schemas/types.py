"""Reusable constrained types (msgspec ``Meta`` aliases) shared by requests and events."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

# The job states and the terminal set live with the job state machine; re-exported here.
from schemas.states import TERMINAL_STATES as TERMINAL_STATES
from schemas.states import JobState as JobState


class Inbound(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: unknown fields are an error (events leave this off, so older
    consumers skip newer fields)."""


JobId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
NodeId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
"""Node ids are one NATS subject token (``node.status.<node_id>``): no dots, spaces or wildcards."""
Tenant = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
"""A tenant: its NATS account's name lower-cased, one subject token (``tenant.<tenant>.placement.*``)."""
Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Technology = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
LabelKey = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9./_-]*$")]
LabelValue = Annotated[str, Meta(max_length=256)]
Cpu = Annotated[float, Meta(gt=0, le=4096)]
"""Cores per replica; fractions allowed."""
MemoryMb = Annotated[int, Meta(gt=0, le=64 * 1024 * 1024)]
Gpu = Annotated[int, Meta(ge=0, le=64)]
Replicas = Annotated[int, Meta(ge=1, le=1000)]
RuntimeS = Annotated[int, Meta(ge=1, le=365 * 24 * 3600)]
Priority = Annotated[int, Meta(ge=0, le=1000)]
RequestId = Annotated[str, Meta(min_length=1, max_length=128)]
ShortText = Annotated[str, Meta(max_length=4096)]

Cluster = Literal["shared", "dedicated"]
Strategy = Literal["best_fit", "spread", "first_fit", "pack", "nearest"]
"""``nearest`` ranks the closest nodes to ``constraints.near`` first (§8.5)."""
PreemptionPolicy = Literal["lower_priority", "never"]
"""Whether a job that fits nowhere may take room from shared jobs of strictly lower priority (§8.3)."""
Outcome = Literal["succeeded", "failed"]
NodeState = Literal["active", "draining", "down"]
