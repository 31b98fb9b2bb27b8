"""The projection's pure logic: a job's view as a merge of its events, no I/O.

A job is projected from *facts*: one :class:`Mark` per event type seen (its time, the
state it implies, a reason), plus placement, instances and torn-down ids. Merging an
event into a view is commutative and idempotent (per event type the earliest mark wins,
sets are unions, times are min/max), so every order and every duplication of the same
events yields the same view. The state is then *derived* from the marks by the job state
machine of :mod:`schemas.states` (:func:`~schemas.states.settle`):

- a terminal state wins over everything; of several, the earliest (a terminal state is
  final, so whatever came later did not happen to the job);
- otherwise the state of highest lifecycle rank (``submitted`` < ``accepted`` < ``placed``
  < ``provisioning`` < ``running`` < ``cancelling``), not the last one to arrive;
- ``cancelled`` is ``job.cancel_requested`` plus the release (``placement.released`` or
  ``cluster.torn_down``), in either order.

``history`` lists the states taken, in lifecycle order, each with its event time.

A job's ``tenant`` (§8.4) is the one its events name (``job.submitted``, ``job.accepted``, the
placement events), ``default`` while none does; :func:`visible` and :func:`listed_tenant` are
who may see it and whose jobs ``job.list`` lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import JobSpec, Resources
from schemas.replies import JobRecord, Transition
from schemas.states import DEGRADED, RANK, cancelled_at, lifecycle_key, overlay, settle, shows_reason, state_after
from services.metadata import instances, revisions
from services.metadata.instances import InstanceMark
from services.metadata.revisions import Degraded, Placed, RevisionMark


class Mark(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """What one event type said about the job: when, which state it implies, why."""

    at: datetime
    state: str | None = None
    reason: str | None = None

    def key(self) -> tuple[datetime, str, str]:
        return (self.at, self.state or "", self.reason or "")


class JobView(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Everything the projection knows about one job (stored as JSON in ``jobs.view``).

    The view structs are not tracked by the garbage collector (``gc=False``: they never form
    reference cycles), so thousands of cached views do not slow every collection down."""

    job_id: str
    spec: JobSpec | None = None
    submitted_at: datetime | None = None
    updated_at: datetime | None = None
    marks: dict[str, Mark] = {}
    placement: Placed | None = None
    """The current (highest) revision's decision."""
    revisions: dict[int, RevisionMark] = {}
    degraded: Degraded | None = None
    """The latest ``placement.degraded`` (the job is degraded while it is of the current revision)."""
    instances: dict[str, InstanceMark] = {}
    torn_down: list[str] = []
    """Instance ids reported torn down (sorted)."""
    replaced: list[str] = []
    """Instance ids another instance replaced (``cluster.instance_replaced``; sorted)."""
    lost: dict[str, str] = {}
    """Instance id -> what EC2 said of it when it was found lost (``cluster.instance_lost``)."""
    listed: dict[str, int] = {}
    """Instance id -> the highest revision whose ``cluster.provisioned`` listed it (resizes, §8.3)."""
    tenant: str = s.DEFAULT_TENANT
    """The account the job was submitted from (§8.4)."""

    @property
    def released(self) -> bool:
        """Whether the job's reservation was released (``placement.released`` seen)."""
        return s.PLACEMENT_RELEASED in self.marks


class Derived(msgspec.Struct, frozen=True, kw_only=True):
    state: str | None
    reason: str | None
    history: list[Transition]


def mark_of(event: ev.JobEvent, kind: str | None = None) -> Mark:
    """The mark an event leaves on its job: the state it leads to (:func:`schemas.states.state_after`;
    None: no state of its own, as for an event type added later) and why. ``kind``: the
    event's type, when the caller has it already."""
    reason: str | None = None
    outcome: str | None = None
    match event:
        case ev.JobSubmitted() | ev.JobAccepted() | ev.PlacementDecided() | ev.ClusterProvisioning():
            pass  # no reason
        case (
            ev.JobRejected(reason=reason)
            | ev.JobCancelRequested(reason=reason)
            | ev.PlacementFailed(reason=reason)
            | ev.PlacementReleased(reason=reason)
            | ev.ClusterTeardownRequested(reason=reason)
        ):
            pass
        case ev.JobCompleted(outcome=outcome, message=reason):
            pass
        case ev.JobExpired(max_runtime_s=limit):
            reason = f"ran longer than max_runtime_s={limit}" if limit else "ran longer than its max runtime"
        case ev.ClusterProvisionFailed(error_code=code, message=message):
            reason = f"provisioning failed: {code}: {message}"
        case ev.PlacementDegraded(reason=reason):
            pass
        case ev.ClusterTornDown():
            reason = getattr(event, "reason", None)
    return Mark(at=event.at, state=state_after(kind or event_type(event), outcome), reason=reason)


_TAGS: dict[type[ev.Event], str] = {}


def event_type(event: ev.Event) -> str:
    tag = _TAGS.get(type(event))
    if tag is None:
        found = event.__struct_config__.tag
        assert isinstance(found, str)
        tag = _TAGS[type(event)] = found
    return tag


def apply(view: JobView | None, event: ev.JobEvent) -> JobView:
    """The view after ``event``; a new object, the input is not changed.

    Commutative and idempotent: ``apply(apply(v, a), b) == apply(apply(v, b), a)`` and
    ``apply(apply(v, a), a) == apply(v, a)``.
    """
    return merge(view, (event,))


def merge(view: JobView | None, events: Sequence[ev.JobEvent]) -> JobView:
    """The view after all ``events`` (of one job, at least one): the same as folding :func:`apply`
    over them, but the view is copied once, not once per event. ``view`` is not changed."""
    new = JobView(job_id=events[0].job_id) if view is None else msgspec.structs.replace(view)
    marks = new.marks
    own_marks = False  # copy-on-write: `marks` is still the input view's dict
    for event in events:
        kind = event_type(event)
        at = event.at
        mark = mark_of(event, kind)
        old = marks.get(kind)
        if old is None or mark.key() < old.key():
            if not own_marks:
                marks, own_marks = dict(marks), True
            marks[kind] = mark
        if new.updated_at is None or at > new.updated_at:
            new.updated_at = at
        if isinstance(event, _TENANTED) and event.tenant != new.tenant:
            new.tenant = tenant_of_job(new.tenant, event.tenant)
        if isinstance(event, ev.JobSubmitted):
            new.spec = new.spec or event.spec
            new.submitted_at = _min(new.submitted_at, at)
        elif isinstance(event, ev.JobAccepted):
            new.spec = new.spec or event.spec
            new.submitted_at = _min(new.submitted_at, event.submitted_at)
        elif isinstance(event, ev.PlacementDecided):
            new.placement = revisions.decided(new.placement, event)
            new.revisions = revisions.revision_marks(new.revisions, event)
        elif isinstance(event, ev.PlacementDegraded):
            new.degraded = revisions.degraded(new.degraded, event)
        elif isinstance(event, ev.ClusterInstanceReplaced):
            new.instances = instances.replaced(new.instances, event)
            new.replaced = sorted(set(new.replaced) | {event.old_instance_id})
        elif isinstance(event, ev.ClusterInstanceLost):
            new.lost = instances.lost(new.lost, event)
        elif isinstance(event, ev.ClusterProvisioning | ev.ClusterProvisioned):
            new.instances = instances.launched(new.instances, event, kind)
            if isinstance(event, ev.ClusterProvisioned):
                new.listed = instances.listed(new.listed, event)
        elif isinstance(event, ev.ClusterTornDown):
            new.torn_down = sorted(set(new.torn_down) | set(event.instance_ids))
    if own_marks:
        new.marks = dict(sorted(marks.items()))  # canonical: same JSON in any order
    return new


_TENANTED = (
    ev.JobSubmitted,
    ev.JobAccepted,
    ev.PlacementDecided,
    ev.PlacementFailed,
    ev.PlacementReleased,
    ev.PlacementDegraded,
)
"""The events that carry their job's tenant."""


def tenant_of_job(known: str, said: str) -> str:
    """The job's tenant once an event says ``said``: any tenant named over ``default`` (an event
    written before tenants, or without the field, says ``default``); of two named, the smaller,
    so that the merge stays commutative (the events of one job never disagree)."""
    if said == s.DEFAULT_TENANT:
        return known
    if known == s.DEFAULT_TENANT:
        return said
    return min(known, said)


def visible(owner: str, caller: str) -> bool:
    """Whether tenant ``caller`` may see a job of tenant ``owner``: its own, and every job from
    inside the scheduler's account (the operators' view, tenant ``default``)."""
    return caller == s.DEFAULT_TENANT or caller == owner


def listed_tenant(caller: str, asked: str | None) -> str | None:
    """Whose jobs ``job.list`` lists (None: every tenant's): a tenant's own, whatever it asked;
    in the scheduler's account the ``tenant`` asked for, if any."""
    return asked if caller == s.DEFAULT_TENANT else caller


def degraded_now(view: JobView) -> Degraded | None:
    """The latest ``placement.degraded`` if it still holds: of the current revision or later
    (:func:`schemas.states.overlay`'s rule), else None."""
    d = view.degraded
    if d is None or (view.placement is not None and view.placement.revision > d.revision):
        return None
    return d


def _overlaid(view: JobView, state: str, reason: str | None) -> tuple[str, str | None]:
    """``degraded`` (with its reason) over a live state while replicas are missing."""
    d = view.degraded
    if d is None:
        return state, reason
    shown = overlay(state, d.revision, view.placement.revision if view.placement is not None else None)
    return (shown, d.reason) if shown == DEGRADED else (state, reason)


def _taken(view: JobView) -> list[tuple[str, Mark]]:
    """The states the marks imply, with ``cancelled`` (cancel requested + released) added."""
    marks = view.marks
    taken: list[tuple[str, Mark]] = [(m.state, m) for m in marks.values() if m.state is not None]
    done_at = cancelled_at(marks)
    if done_at is not None:
        reason = marks[s.JOB_CANCEL_REQUESTED].reason
        taken.append(("cancelled", Mark(at=done_at, state="cancelled", reason=reason)))
    return taken


def _reason(state: str, m: Mark) -> str | None:
    return m.reason if shows_reason(state) else None


def state_of(view: JobView) -> tuple[str | None, str | None]:
    """``(derive(view).state, derive(view).reason)`` without building the history."""
    taken = _taken(view)
    if not taken:
        return None, None
    (state, m), _ = settle(taken)
    return _overlaid(view, state, _reason(state, m))


def derive(view: JobView) -> Derived:
    """State, reason and history from the marks (see the module docstring)."""
    taken = _taken(view)
    if not taken:
        return Derived(state=None, reason=None, history=[])
    (base, m), steps = settle(taken)
    steps.sort(key=lifecycle_key)
    history: list[Transition] = []
    for step, mark in steps:
        if not history or history[-1].state != step:
            history.append(Transition(state=step, at=mark.at))
    state, reason = _overlaid(view, base, _reason(base, m))
    if state != base and view.degraded is not None:
        history.append(Transition(state=state, at=view.degraded.at))
    return Derived(state=state, reason=reason, history=history)


def to_record(view: JobView, derived: Derived | None = None) -> JobRecord | None:
    """The contract's job record, or None while no event has said what state the job is in."""
    d = derived or derive(view)
    if d.state is None:
        return None
    torn_all = s.CLUSTER_TORN_DOWN in view.marks and not view.torn_down
    listed = instances.records(
        view.instances,
        view.torn_down,
        view.replaced,
        view.lost,
        torn_all=torn_all,
        resized_away=instances.removed(view.listed),
    )
    p = view.placement
    return JobRecord(
        job_id=view.job_id,
        state=d.state,
        reason=d.reason,
        spec=view.spec,
        placement=revisions.record(p, view.revisions, degraded_now(view)) if p else None,
        instances=listed,
        submitted_at=view.submitted_at,
        updated_at=view.updated_at,
        history=d.history,
        tenant=view.tenant,
    )


def reservations(view: JobView) -> list[tuple[int, str, Resources | None]]:
    """(replica, node_id, per-replica resources) the job reserves on shared nodes: the current
    revision's assignments (a missing replica reserves nothing)."""
    p = view.placement
    if p is None:
        return []
    res = p.resources or (view.spec.resources if view.spec else None)
    return [(a.replica, a.node_id, res) for a in p.assignments if a.node_id is not None]


def _min(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


__all__ = [
    "RANK",
    "Derived",
    "JobView",
    "Mark",
    "apply",
    "degraded_now",
    "derive",
    "listed_tenant",
    "mark_of",
    "merge",
    "reservations",
    "state_of",
    "tenant_of_job",
    "to_record",
    "visible",
]
