"""Pure teardown logic: each job's lifecycle record (end, release, deadline), due deadlines,
orphan verdicts. (The job states as clients see them are ``schemas.states``.)

``apply(record, event, now)`` folds one event into the job's :class:`JobLifecycle`
record and says which effect (if any) is owed. The first end trigger wins; a record
that has ended but is not yet ``released`` owes a :class:`Release` on every event
(so a crash between the effects and marking the record is healed by any redelivery);
instances reported after the release owe a :class:`TerminateLate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

from schemas import events as ev
from schemas import subjects as s
from schemas.lifecycle import JobLifecycle
from services.cloud.instances import InstanceInfo

TeardownEvent = (
    ev.JobAccepted
    | ev.JobCancelRequested
    | ev.JobCompleted
    | ev.JobExpired
    | ev.PlacementDecided
    | ev.PlacementFailed
    | ev.ClusterProvisioning
    | ev.ClusterProvisioned
    | ev.ClusterProvisionFailed
    | ev.ClusterInstanceReplaced
)


@dataclass(frozen=True, slots=True)
class Release:
    """End the job: terminate its instances (by id, and by tag when ``sweep``), then publish
    ``cluster.torn_down`` (when ``dedicated``) and ``placement.released``; then mark it released."""

    end: str
    reason: str | None
    dedicated: bool
    sweep: bool
    instance_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TerminateLate:
    """Instances reported after the job was already released: terminate them, no new events."""

    instance_ids: tuple[str, ...]


Effect = Release | TerminateLate | None


def _end_of(event: TeardownEvent) -> tuple[str, str | None] | None:
    match event:
        case ev.JobCancelRequested():
            return "cancelled", event.reason or "cancel requested"
        case ev.JobCompleted():
            return event.outcome, event.message
        case ev.JobExpired():
            n = event.max_runtime_s
            return "expired", f"max_runtime_s {n} exceeded" if n else "max runtime exceeded"
        case ev.ClusterProvisionFailed():
            return "failed", f"provisioning failed: {event.error_code}: {event.message}"
        case ev.PlacementFailed():
            return "failed", event.reason
    return None


def _ranked_types(event: ev.PlacementDecided) -> list[str]:
    """A dedicated decision's instance types in preference order: assigned, then candidates."""
    types = [a.instance_type for a in event.assignments] + [c.instance_type for c in event.candidates]
    return list(dict.fromkeys(t for t in types if t))


def _deadline(rec: JobLifecycle) -> datetime | None:
    if rec.end is not None or rec.started_at is None or not rec.max_runtime_s:
        return None
    return rec.started_at + timedelta(seconds=rec.max_runtime_s)


def nothing_to_track(event: TeardownEvent) -> bool:
    """A shared job without a runtime limit needs no record until it ends: there are no
    instances to terminate and no deadline to keep, and its end trigger creates the record
    (so "released exactly once" still holds). Skipping the KV read-modify-write for its
    ``job.accepted`` and ``placement.decided`` keeps teardown off the hot path of the common
    job."""
    match event:
        case ev.JobAccepted():
            # a tenant's job is recorded all the same: its placement.released carries the tenant
            # (§8.4), and its end triggers (job.cancel_requested, job.completed) do not
            return event.spec.cluster == "shared" and not event.spec.max_runtime_s and event.tenant == s.DEFAULT_TENANT
        case ev.PlacementDecided():
            return event.cluster == "shared" and event.max_runtime_s is None  # UNSET: unknown, track
    return False


def tenant_of(rec: JobLifecycle, event: ev.JobAccepted | ev.PlacementDecided | ev.PlacementFailed) -> str:
    """The job's tenant once ``event`` is recorded: the first one other than ``default`` seen (a
    job's tenant never changes; an event written before tenants, or by an older placement,
    says ``default`` and must not erase it)."""
    return rec.tenant if event.tenant == s.DEFAULT_TENANT else event.tenant


def apply(rec: JobLifecycle | None, event: TeardownEvent, now: datetime) -> tuple[JobLifecycle, Effect]:
    """Fold ``event`` into the job's record; return the new record and the effect owed."""
    r = msgspec.structs.replace(rec) if rec is not None else JobLifecycle(job_id=event.job_id)
    r.instance_ids = list(r.instance_ids)
    r.replicas = dict(r.replicas)
    r.replaced = list(r.replaced)
    new_ids: list[str] = []
    match event:
        case ev.JobAccepted():
            r.cluster = r.cluster or event.spec.cluster
            r.max_runtime_s = event.spec.max_runtime_s
            r.tenant = tenant_of(r, event)
        case ev.PlacementDecided():
            r.cluster = event.cluster
            r.tenant = tenant_of(r, event)
            if isinstance(event.max_runtime_s, int):
                r.max_runtime_s = event.max_runtime_s
            if event.cluster == "shared" and r.started_at is None:
                r.started_at = event.at
            if event.revision >= r.revision:  # a late older revision changes nothing
                r.revision, r.wanted = event.revision, event.wanted
                if event.cluster == "dedicated":
                    r.instance_types = _ranked_types(event)
        case ev.PlacementFailed():
            r.tenant = tenant_of(r, event)
        case ev.ClusterProvisionFailed():
            r.cluster = r.cluster or "dedicated"
        case ev.ClusterProvisioning() | ev.ClusterProvisioned():
            r.cluster = r.cluster or "dedicated"
            new_ids = [i.instance_id for i in event.instances if i.instance_id not in r.instance_ids]
            r.instance_ids.extend(new_ids)
            r.replicas.update({i.instance_id: i.replica for i in event.instances if i.replica >= 0})
            if isinstance(event, ev.ClusterProvisioned):
                r.started_at = r.started_at or event.at
                r.provisioned_revision = max(r.provisioned_revision, event.revision or 1)
        case ev.ClusterInstanceReplaced():
            r.cluster = r.cluster or "dedicated"
            new_ids = [event.new_instance_id] if event.new_instance_id not in r.instance_ids else []
            r.instance_ids.extend(new_ids)
            r.replicas[event.new_instance_id] = event.replica
            r.replicas.setdefault(event.old_instance_id, event.replica)
            if event.old_instance_id not in r.replaced:
                r.replaced.append(event.old_instance_id)
        case _:
            pass
    end = _end_of(event)
    if end is not None and r.end is None:
        r.end, r.end_reason = end
        r.ended_at = now
        if isinstance(event, ev.PlacementFailed):
            r.released = True  # nothing was reserved or launched
    r.deadline = _deadline(r)
    if r.end is not None and not r.released:
        return r, Release(
            end=r.end,
            reason=r.end_reason,
            dedicated=r.cluster == "dedicated" or bool(r.instance_ids),
            # By tag only when the job is known to be dedicated: its launch may not have been
            # reported yet. A job with no record is shared (or not yet accepted, and JOBS is read
            # in order): sweeping EC2 at every end of a shared job would cost an API call each.
            # Instances reported later still get TerminateLate, and the reaper is the backstop.
            sweep=r.cluster == "dedicated",
            instance_ids=tuple(r.instance_ids),
        )
    if r.released and new_ids:
        if isinstance(event, ev.ClusterInstanceReplaced):  # a replacement racing the job's end
            new_ids.append(event.old_instance_id)
        return r, TerminateLate(tuple(new_ids))
    return r, None


def mark_released(rec: JobLifecycle | None, job_id: str) -> JobLifecycle:
    r = msgspec.structs.replace(rec) if rec is not None else JobLifecycle(job_id=job_id)
    r.released = True
    r.deadline = None
    return r


def retired_at(rec: JobLifecycle | None) -> datetime | None:
    """When a record may start counting towards being forgotten: its end, once the job is also
    released (a record without ``ended_at`` predates it: at once). None while it must be kept."""
    if rec is None or rec.end is None or not rec.released:
        return None
    return rec.ended_at or datetime.min.replace(tzinfo=UTC)


def forgettable(retired: Mapping[str, tuple[datetime, int]], now: datetime, keep_s: float) -> list[tuple[str, int]]:
    """The ``(job_id, revision)`` of the records ended and released ``keep_s`` or more before
    ``now`` (``retired``: job id -> (:func:`retired_at`, revision)), oldest first."""
    cutoff = now - timedelta(seconds=keep_s)
    old = [(at, job_id, rev) for job_id, (at, rev) in retired.items() if at <= cutoff]
    return [(job_id, rev) for _, job_id, rev in sorted(old)]


def due(deadlines: Mapping[str, datetime], now: datetime) -> list[str]:
    """Jobs whose deadline has passed, earliest first."""
    return [j for j, d in sorted(deadlines.items(), key=lambda kv: (kv[1], kv[0])) if d <= now]


def orphan_reason(inst: InstanceInfo, rec: JobLifecycle | None, now: datetime, grace_s: float) -> str | None:
    """Why a live project-tagged instance must go, or None while it may belong to a live job."""
    grace = timedelta(seconds=grace_s)
    if rec is None:
        if inst.launch_time is None or now - inst.launch_time >= grace:
            return f"job {inst.job_id or '(no job tag)'} unknown"
        return None
    if rec.end is not None and (rec.ended_at is None or now - rec.ended_at >= grace):
        return f"job {rec.end}"
    return None
