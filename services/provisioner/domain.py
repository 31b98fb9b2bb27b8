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
from schemas.lifecycle import JobLifecycle
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


class Step(Enum):
    """What a provisioner does with a dedicated job's revision, given teardown's record."""

    ENDED = "ended"
    """The job ended (or was released): nothing to launch or terminate."""
    DONE = "done"
    """Its ``cluster.provisioned`` is stored already (a redelivery, or a stale revision)."""
    WAIT = "wait"
    """Not yet: the record has not seen this revision, or the one before is not provisioned."""
    GO = "go"


def revision_step(rec: JobLifecycle | None, revision: int) -> Step:
    """Revisions of a dedicated job are applied one after another, each once (§8.3). Revision 1
    is the first launch; revision *n* waits until revision *n - 1* is provisioned and teardown has
    recorded revision *n* (so healing knows which replicas a shrink removes before they go)."""
    if rec is None:
        return Step.GO if revision <= 1 else Step.WAIT
    if rec.end is not None or rec.released:
        return Step.ENDED
    provisioned = max(rec.provisioned_revision, 1 if rec.started_at is not None else 0)
    if provisioned >= revision:
        return Step.DONE
    if revision > 1 and (rec.revision < revision or provisioned < revision - 1):
        return Step.WAIT
    return Step.GO


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
    "Step",
    "client_token",
    "launch_progress",
    "next_type",
    "plan_launch",
    "ranked_types",
    "revision_step",
]
