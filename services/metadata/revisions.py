"""A job's placement as revisions (§8.1), pure: which ``placement.decided`` is current, every
revision's changes, and whether the job is degraded.

Each merge keeps one winner by a total order, so any order and any duplication of the same
events gives the same result: the highest revision wins; of two events of the same revision
(two placement instances racing, or a redelivery), the earliest, then the smaller event id.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas import events as ev
from schemas.jobs import Resources
from schemas.replies import PlacementRecord, Revision


class Placed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The current (highest) revision's decision."""

    at: datetime
    assignments: list[ev.Assignment]
    candidates: list[ev.Candidate]
    resources: Resources | None = None
    revision: int = 1
    replicas: int | None = None
    event_id: str = ""


class RevisionMark(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One revision seen: when, and which replicas moved why."""

    at: datetime
    changes: list[ev.Change] = []
    event_id: str = ""


class Degraded(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The latest ``placement.degraded``: the replicas that fit nowhere at ``revision``."""

    at: datetime
    revision: int
    missing: list[int]
    reason: str
    event_id: str = ""


def _stands(current: Placed | Degraded | None, event: ev.PlacementDecided | ev.PlacementDegraded) -> bool:
    """Whether ``current`` stays against ``event``: a higher revision wins; of the same revision,
    the earlier, then the smaller event id."""
    if current is None:
        return False
    if event.revision != current.revision:
        return current.revision > event.revision
    return (current.at, current.event_id) <= (event.at, event.event_id)


def decided(current: Placed | None, event: ev.PlacementDecided) -> Placed:
    """The current decision after ``event``."""
    if current is not None and _stands(current, event):
        return current
    return Placed(
        at=event.at,
        assignments=event.assignments,
        candidates=event.candidates,
        resources=event.resources,
        revision=event.revision,
        replicas=event.replicas,
        event_id=event.event_id,
    )


def revision_marks(marks: dict[int, RevisionMark], event: ev.PlacementDecided) -> dict[int, RevisionMark]:
    """Every revision seen after ``event`` (a new dict when it changed, else ``marks`` itself)."""
    old = marks.get(event.revision)
    if old is not None and (old.at, old.event_id) <= (event.at, event.event_id):
        return marks
    new = {**marks, event.revision: RevisionMark(at=event.at, changes=event.changes, event_id=event.event_id)}
    return dict(sorted(new.items()))


def degraded(current: Degraded | None, event: ev.PlacementDegraded) -> Degraded:
    """The latest ``placement.degraded`` after ``event``."""
    if current is not None and _stands(current, event):
        return current
    return Degraded(
        at=event.at,
        revision=event.revision,
        missing=sorted(event.missing),
        reason=event.reason,
        event_id=event.event_id,
    )


def record(placed: Placed, marks: dict[int, RevisionMark], missing: Degraded | None) -> PlacementRecord:
    """The job record's ``placement``: the current revision, and ``missing`` while degraded."""
    return PlacementRecord(
        assignments=placed.assignments,
        candidates=placed.candidates,
        revision=placed.revision,
        replicas=placed.replicas,
        missing=missing.missing if missing is not None else [],
        degraded_reason=missing.reason if missing is not None else None,
        revisions=[Revision(revision=n, at=m.at, changes=m.changes) for n, m in marks.items()],
    )


__all__ = ["Degraded", "Placed", "RevisionMark", "decided", "degraded", "record", "revision_marks"]
