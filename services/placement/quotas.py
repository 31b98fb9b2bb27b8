"""Tenant quotas (§8.4), pure: what each tenant's live jobs hold, what it used in the last 30
days, and whether a decision keeps it within its quota.

:class:`Accounts` is fed the stored placement events in stream order (the ledger, and the
decider's own decisions as soon as they are stored: idempotent by job and revision, so the
ledger's later copy is ignored). A live job's :class:`Share` is its latest revision's: cpu,
memory and gpu times its placed replicas (a shared job's replicas that have a node; every
replica of a dedicated job, whose instances count under ``instances``), and one job. A
revision replaces the job's share (a re-placement after a lost node moves the job, it does
not count it twice); a release removes it. Usage is thus a function of PLACEMENTS alone: the
same on every instance and after a restart.

The compute budget (``cpu_hours``): a job uses ``cpu x placed replicas`` cores from its
decided revision's ``at`` to the next revision's or its release's. Closed spans are summed
into one bucket per tenant and hour (at most ``WINDOW_HOURS + 2`` per tenant, older ones are
dropped), running jobs count up to ``now``. The window starts at the hour that contains
``now - 30 days`` (up to an hour more than exactly 30 days: the price of bounded memory).

Cpu is counted in millicores (integers), so sums and differences are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import msgspec

from schemas import events as ev
from schemas.jobs import JobSpec, Resources
from schemas.replies import Quota, Usage

__all__ = [
    "WINDOW_S",
    "Accounts",
    "QuotaBook",
    "Share",
    "budget_reason",
    "cap",
    "most_cpu_hours",
    "over_quota",
    "per_replica",
    "replicas_within",
    "share_of",
    "share_of_spec",
]

WINDOW_S = 30 * 24 * 3600
"""The compute budget's rolling window."""
HOUR_S = 3600
WINDOW_HOURS = WINDOW_S // HOUR_S
Concurrent = Literal["cpu", "memory_mb", "gpu", "jobs", "instances"]
CONCURRENT: tuple[Concurrent, ...] = ("cpu", "memory_mb", "gpu", "jobs", "instances")


def _milli(cpu: float) -> int:
    return round(cpu * 1000)


class Share(msgspec.Struct, frozen=True):
    """What a job (or a tenant's jobs together) holds at once; cpu in millicores."""

    cpu_m: int = 0
    memory_mb: int = 0
    gpu: int = 0
    jobs: int = 0
    instances: int = 0

    def __add__(self, o: Share) -> Share:
        return Share(
            self.cpu_m + o.cpu_m,
            self.memory_mb + o.memory_mb,
            self.gpu + o.gpu,
            self.jobs + o.jobs,
            self.instances + o.instances,
        )

    def __sub__(self, o: Share) -> Share:
        return Share(
            self.cpu_m - o.cpu_m,
            self.memory_mb - o.memory_mb,
            self.gpu - o.gpu,
            self.jobs - o.jobs,
            self.instances - o.instances,
        )

    def times(self, n: int) -> Share:
        return Share(self.cpu_m * n, self.memory_mb * n, self.gpu * n, self.jobs * n, self.instances * n)

    def value(self, name: Concurrent) -> float:
        """The figure of quota field ``name`` (cpu in cores)."""
        return self.cpu_m / 1000 if name == "cpu" else getattr(self, name)


NOTHING = Share()


def _replicas_share(r: Resources, replicas: int, dedicated: bool) -> Share:
    return Share(_milli(r.cpu) * replicas, r.memory_mb * replicas, r.gpu * replicas, 1, replicas if dedicated else 0)


def share_of(e: ev.PlacementDecided) -> Share:
    """The share of a job whose latest revision is ``e``."""
    if e.resources is None:
        return Share(jobs=1)
    dedicated = e.cluster == "dedicated"
    placed = len(e.assignments) if dedicated else sum(1 for a in e.assignments if a.node_id is not None)
    return _replicas_share(e.resources, placed, dedicated)


def share_of_spec(spec: JobSpec) -> Share:
    """The share of a job of ``spec`` once every replica is placed (what a first decision adds)."""
    return _replicas_share(spec.resources, spec.replicas, spec.cluster == "dedicated")


def _fmt(x: float) -> str:
    return f"{x:g}" if x == int(x) else f"{x:.2f}".rstrip("0")


def over_quota(tenant: str, quota: Quota, used: Share, add: Share) -> str | None:
    """Why adding ``add`` to ``used`` takes ``tenant`` over a concurrent quota (the first such
    field, in ``CONCURRENT`` order), or None. A field ``add`` does not raise never blocks."""
    for name in CONCURRENT:
        limit = getattr(quota, name)
        more = add.value(name)
        if limit is None or more <= 0:
            continue
        now = used.value(name)
        if now + more > limit + 1e-9:
            return f"quota: tenant {tenant} uses {_fmt(now)} of {_fmt(limit)} {name}"
    return None


def per_replica(r: Resources) -> Share:
    """What one more placed replica of a shared job adds."""
    return Share(_milli(r.cpu), r.memory_mb, r.gpu)


def cap(tenant: str, quota: Quota, used: Share, placed: int, each: Share) -> tuple[int, str] | None:
    """At most how many replicas a placed shared job (``placed`` now, each ``each``) may have
    placed within ``tenant``'s quota, beside ``used`` (its own share included), and the
    explanation for the ones left out; None when no field bounds them."""
    more = replicas_within(quota, used, each)
    if more is None:
        return None
    why = over_quota(tenant, quota, used + each.times(more), each)
    return placed + more, why or f"quota: tenant {tenant}"


def replicas_within(quota: Quota, used: Share, per_replica: Share) -> int | None:
    """How many more replicas of ``per_replica`` fit in ``quota`` beside ``used`` (never below
    0); None when no field bounds them."""
    fits: int | None = None
    for name in CONCURRENT:
        limit = getattr(quota, name)
        each = per_replica.value(name)
        if limit is None or each <= 0:
            continue
        n = max(0, math.floor((limit - used.value(name)) / each + 1e-9))
        fits = n if fits is None else min(fits, n)
    return fits


def most_cpu_hours(spec: JobSpec) -> float | None:
    """The most core-hours a job of ``spec`` can use (cpu x replicas x max_runtime_s), None
    without ``max_runtime_s``."""
    if not spec.max_runtime_s:
        return None
    return spec.resources.cpu * spec.replicas * spec.max_runtime_s / HOUR_S


def budget_reason(tenant: str, quota: Quota, used_hours: float, spec: JobSpec) -> str | None:
    """Why a job of ``spec`` is rejected for ``tenant``'s compute budget, or None. A job with
    ``max_runtime_s`` must fit in what is left; one without can use any amount, so it is refused
    only when nothing is left."""
    limit = quota.cpu_hours
    if limit is None:
        return None
    most = most_cpu_hours(spec)
    used = _fmt(round(used_hours, 2))
    if most is None:
        if used_hours < limit:
            return None
        return f"quota: tenant {tenant} used {used} of {_fmt(limit)} cpu_hours in the last 30 days"
    if used_hours + most <= limit + 1e-9:
        return None
    return (
        f"quota: tenant {tenant} used {used} of {_fmt(limit)} cpu_hours in the last 30 days; "
        f"this job may use {_fmt(round(most, 2))} more ({_fmt(spec.resources.cpu)} cpu x {spec.replicas} "
        f"replicas x {spec.max_runtime_s} s)"
    )


@dataclass(slots=True)
class _Live:
    tenant: str
    revision: int
    share: Share
    since: float
    """Epoch seconds of the revision's ``at``: its cores have run since then."""


@dataclass
class Accounts:
    """Usage per tenant, from the stored placement events (see the module docstring)."""

    live: dict[str, _Live] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    """Released jobs: a decision of theirs stored later is never counted."""
    totals: dict[str, Share] = field(default_factory=dict)
    jobs_of: dict[str, set[str]] = field(default_factory=dict)
    hours: dict[str, dict[int, float]] = field(default_factory=dict)
    """tenant -> hour (epoch seconds // 3600) -> core-hours used in that hour by ended spans."""

    def decided(self, e: ev.PlacementDecided) -> bool:
        """A stored revision: the job's share from now on, if it is its highest and the job lives."""
        if e.job_id in self.gone:
            return False
        cur = self.live.get(e.job_id)
        if cur is not None and e.revision <= cur.revision:
            return False
        t = e.at.timestamp()
        if cur is not None:
            t = max(t, cur.since)
            self._end(e.job_id, cur, t)
            if cur.tenant != e.tenant:  # never on events this service writes (a revision copies it)
                self._forget(cur.tenant, e.job_id)
        share = share_of(e)
        self.live[e.job_id] = _Live(e.tenant, e.revision, share, t)
        self.totals[e.tenant] = self.totals.get(e.tenant, NOTHING) + share
        self.jobs_of.setdefault(e.tenant, set()).add(e.job_id)
        return True

    def released(self, job_id: str, at: datetime) -> bool:
        """A stored release: the job's share is freed (once); its span ends at ``at``."""
        self.gone.add(job_id)
        cur = self.live.pop(job_id, None)
        if cur is None:
            return False
        self._end(job_id, cur, max(at.timestamp(), cur.since))
        self._forget(cur.tenant, job_id)
        return True

    def restore(self, job_id: str, tenant: str, revision: int, share: Share, since: float) -> None:
        """A live job's span as loaded from a snapshot (see :mod:`services.placement.snapshot`)."""
        self.live[job_id] = _Live(tenant, revision, share, since)
        self.totals[tenant] = self.totals.get(tenant, NOTHING) + share
        self.jobs_of.setdefault(tenant, set()).add(job_id)

    def _forget(self, tenant: str, job_id: str) -> None:
        jobs = self.jobs_of.get(tenant, set())
        jobs.discard(job_id)
        if not jobs:
            self.jobs_of.pop(tenant, None)

    def tenant_of(self, job_id: str) -> str | None:
        cur = self.live.get(job_id)
        return cur.tenant if cur is not None else None

    def share(self, job_id: str) -> Share:
        """A live job's share (nothing for an unknown or released one)."""
        cur = self.live.get(job_id)
        return cur.share if cur is not None else NOTHING

    def used(self, tenant: str) -> Share:
        """What ``tenant``'s live jobs hold now."""
        return self.totals.get(tenant, NOTHING)

    def cpu_hours(self, tenant: str, now: float) -> float:
        """Core-hours ``tenant`` used in the window ending at ``now`` (epoch seconds)."""
        first = int(now - WINDOW_S) // HOUR_S
        total = sum(h for hour, h in self.hours.get(tenant, {}).items() if hour >= first)
        start = first * HOUR_S
        for job_id in self.jobs_of.get(tenant, ()):
            cur = self.live[job_id]
            if now > cur.since:
                total += cur.share.cpu_m / 1000 * (now - max(cur.since, start)) / HOUR_S
        return total

    def usage(self, tenant: str, now: float) -> Usage:
        u = self.used(tenant)
        return Usage(
            cpu=u.cpu_m / 1000,
            memory_mb=u.memory_mb,
            gpu=u.gpu,
            jobs=u.jobs,
            instances=u.instances,
            cpu_hours=self.cpu_hours(tenant, now),
        )

    def _end(self, job_id: str, cur: _Live, t: float) -> None:
        """Close ``cur``'s span at ``t``: its core-hours into the hour buckets, its share off the total."""
        self.totals[cur.tenant] = left = self.totals[cur.tenant] - cur.share
        if left == NOTHING:
            del self.totals[cur.tenant]
        if cur.share.cpu_m and t > cur.since:
            self._accrue(cur.tenant, cur.share.cpu_m / 1000, cur.since, t)

    def _accrue(self, tenant: str, cores: float, t0: float, t1: float) -> None:
        buckets = self.hours.setdefault(tenant, {})
        last = int(t1) // HOUR_S
        start = max(t0, (last - WINDOW_HOURS - 1) * HOUR_S)  # older hours are out of every window to come
        while start < t1:
            hour = int(start) // HOUR_S
            end = min(t1, (hour + 1) * HOUR_S)
            buckets[hour] = buckets.get(hour, 0.0) + cores * (end - start) / HOUR_S
            start = end
        oldest = last - WINDOW_HOURS - 1
        if len(buckets) > WINDOW_HOURS + 2:
            for hour in [h for h in buckets if h < oldest]:
                del buckets[hour]


Source = Literal["config", "runtime", "none"]


@dataclass
class QuotaBook:
    """Each tenant's quota: the TOML's ``[tenants.<name>]``, replaced by a run-time ``quota.set``
    (bucket ``QUOTAS``) for as long as that stands."""

    config: dict[str, Quota] = field(default_factory=dict)
    runtime: dict[str, Quota] = field(default_factory=dict)

    def of(self, tenant: str) -> tuple[Quota, Source]:
        q = self.runtime.get(tenant)
        if q is not None:
            return q, "runtime"
        q = self.config.get(tenant)
        if q is not None:
            return q, "config"
        return UNLIMITED, "none"

    def quota(self, tenant: str) -> Quota:
        return self.of(tenant)[0]

    def put(self, tenant: str, quota: Quota | None) -> bool:
        """A run-time quota (None: removed, the TOML's applies again); whether it changed."""
        before = self.quota(tenant)
        if quota is None:
            self.runtime.pop(tenant, None)
        else:
            self.runtime[tenant] = quota
        return self.quota(tenant) != before


UNLIMITED = Quota()
