"""Pure provisioning logic: launch plan, instance-type fallback, client token, launch progress.

No I/O here; the handlers feed it what EC2 reported and act on what it returns. What an
instance is, its tags and EC2's error kinds are shared with teardown (``services.cloud``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from schemas.events import Assignment, Candidate
from services.cloud.instances import DEAD_STATES, LIVE_STATES, InstanceInfo


def client_token(job_id: str, replica: int, instance_type: str) -> str:
    """Idempotency token of one replica's launch on one type (EC2 allows 64 ASCII chars)."""
    digest = hashlib.sha256(f"{job_id}/{replica}/{instance_type}".encode()).hexdigest()
    return digest[:64]


def ranked_types(assignments: Sequence[Assignment], candidates: Sequence[Candidate]) -> list[str]:
    """Instance types in preference order: the assigned ones first, then the ranked candidates."""
    out: list[str] = []
    for t in [a.instance_type for a in assignments] + [c.instance_type for c in candidates]:
        if t and t not in out:
            out.append(t)
    return out


def next_type(ranked: Sequence[str], preferred: str | None, exhausted: Iterable[str]) -> str | None:
    """The first type to try for a replica: its assigned type, else the next ranked one not exhausted."""
    gone = set(exhausted)
    for t in ([preferred] if preferred else []) + list(ranked):
        if t not in gone:
            return t
    return None


@dataclass(slots=True)
class LaunchPlan:
    keep: dict[int, InstanceInfo] = field(default_factory=dict)
    """One live instance per replica that already exists (found by tag)."""
    extra: list[InstanceInfo] = field(default_factory=list)
    """Surplus live instances of this job (a duplicate replica, an unknown replica): terminate them."""
    missing: list[Assignment] = field(default_factory=list)
    """Replicas still to launch."""


def plan_launch(assignments: Sequence[Assignment], existing: Iterable[InstanceInfo]) -> LaunchPlan:
    """Reconcile the wanted replicas with the job's live instances found by tag."""
    plan = LaunchPlan()
    wanted = {a.replica for a in assignments}
    live = sorted(
        (i for i in existing if i.state in LIVE_STATES),
        key=lambda i: (i.launch_time is None, i.launch_time or datetime.min, i.instance_id),
    )
    for inst in live:
        if inst.replica in wanted and inst.replica not in plan.keep:
            plan.keep[inst.replica] = inst
        else:
            plan.extra.append(inst)
    plan.missing = [a for a in sorted(assignments, key=lambda a: a.replica) if a.replica not in plan.keep]
    return plan


class Progress(Enum):
    RUNNING = "running"
    WAITING = "waiting"
    LOST = "lost"


def launch_progress(instances: Iterable[InstanceInfo], expected: int) -> Progress:
    """All expected instances running, still waiting, or one of them died on the way."""
    states = [i.state for i in instances]
    if any(s in DEAD_STATES or s in ("stopping", "stopped") for s in states):
        return Progress.LOST
    if len(states) >= expected and all(s == "running" for s in states):
        return Progress.RUNNING
    return Progress.WAITING


__all__ = [
    "LaunchPlan",
    "Progress",
    "client_token",
    "launch_progress",
    "next_type",
    "plan_launch",
    "ranked_types",
]
