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
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import JobSpec, Resources
from schemas.replies import InstanceRecord, JobRecord, PlacementRecord, Transition
from schemas.states import RANK, cancelled_at, lifecycle_key, settle, shows_reason, state_after

_INSTANCE_RANK = {s.CLUSTER_PROVISIONING: 0, s.CLUSTER_PROVISIONED: 1}


class Mark(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """What one event type said about the job: when, which state it implies, why."""

    at: datetime
    state: str | None = None
    reason: str | None = None

    def key(self) -> tuple[datetime, str, str]:
        return (self.at, self.state or "", self.reason or "")


class InstanceMark(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    instance_id: str
    instance_type: str
    replica: int
    state: str
    private_ip: str | None = None
    rank: int = 0
    """0 from ``cluster.provisioning``, 1 from ``cluster.provisioned`` (which supersedes)."""

    def key(self) -> tuple[int, bool, str, str]:
        return (self.rank, self.private_ip is not None, self.state, self.private_ip or "")


class Placed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    at: datetime
    assignments: list[ev.Assignment]
    candidates: list[ev.Candidate]
    resources: Resources | None = None


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
    instances: dict[str, InstanceMark] = {}
    torn_down: list[str] = []
    """Instance ids reported torn down (sorted)."""

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
        if isinstance(event, ev.JobSubmitted):
            new.spec = new.spec or event.spec
            new.submitted_at = _min(new.submitted_at, at)
        elif isinstance(event, ev.JobAccepted):
            new.spec = new.spec or event.spec
            new.submitted_at = _min(new.submitted_at, event.submitted_at)
        elif isinstance(event, ev.PlacementDecided):
            if new.placement is None or at < new.placement.at:
                new.placement = Placed(
                    at=at, assignments=event.assignments, candidates=event.candidates, resources=event.resources
                )
        elif isinstance(event, ev.ClusterProvisioning | ev.ClusterProvisioned):
            rank = _INSTANCE_RANK[kind]
            merged = dict(new.instances)
            for i in event.instances:
                cand = InstanceMark(
                    instance_id=i.instance_id,
                    instance_type=i.instance_type,
                    replica=i.replica,
                    state=i.state,
                    private_ip=i.private_ip,
                    rank=rank,
                )
                cur = merged.get(i.instance_id)
                if cur is None or cand.key() > cur.key():
                    merged[i.instance_id] = cand
            new.instances = dict(sorted(merged.items()))
        elif isinstance(event, ev.ClusterTornDown):
            new.torn_down = sorted(set(new.torn_down) | set(event.instance_ids))
    if own_marks:
        new.marks = dict(sorted(marks.items()))  # canonical: same JSON in any order
    return new


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
    return state, _reason(state, m)


def derive(view: JobView) -> Derived:
    """State, reason and history from the marks (see the module docstring)."""
    taken = _taken(view)
    if not taken:
        return Derived(state=None, reason=None, history=[])
    (state, m), steps = settle(taken)
    steps.sort(key=lifecycle_key)
    history: list[Transition] = []
    for step, mark in steps:
        if not history or history[-1].state != step:
            history.append(Transition(state=step, at=mark.at))
    return Derived(state=state, reason=_reason(state, m), history=history)


def to_record(view: JobView, derived: Derived | None = None) -> JobRecord | None:
    """The contract's job record, or None while no event has said what state the job is in."""
    d = derived or derive(view)
    if d.state is None:
        return None
    torn_all = s.CLUSTER_TORN_DOWN in view.marks and not view.torn_down
    torn = set(view.torn_down)
    instances = [
        InstanceRecord(
            instance_id=i.instance_id,
            instance_type=i.instance_type,
            replica=i.replica,
            state="terminated" if torn_all or i.instance_id in torn else i.state,
            private_ip=i.private_ip,
        )
        for i in sorted(view.instances.values(), key=lambda i: (i.replica, i.instance_id))
    ]
    p = view.placement
    return JobRecord(
        job_id=view.job_id,
        state=d.state,
        reason=d.reason,
        spec=view.spec,
        placement=PlacementRecord(assignments=p.assignments, candidates=p.candidates) if p else None,
        instances=instances,
        submitted_at=view.submitted_at,
        updated_at=view.updated_at,
        history=d.history,
    )


def reservations(view: JobView) -> list[tuple[int, str, Resources | None]]:
    """(replica, node_id, per-replica resources) the job reserves on shared nodes."""
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
    "derive",
    "mark_of",
    "merge",
    "reservations",
    "state_of",
    "to_record",
]
