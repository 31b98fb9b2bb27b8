"""The job state machine, written once: the states, which event leads to which state, which
states are terminal, and how states rank. Pure, no I/O; every function is a lookup or two.

Two readers apply it to the same events:

- the gateway folds events in arrival order (:func:`next_state`): never backwards; once an
  end is requested (``cancelling``) or reached it stays, and only teardown's
  ``placement.released``, whose ``reason`` is the end state teardown recorded, moves it;
- metadata derives the state from what each event type said, in any order (:func:`settle`):
  the earliest terminal state wins, else the live state of highest rank; ``cancelled`` is a
  requested cancel plus a release (:func:`cancelled_at`).

A new state (``degraded``, say) is added to :data:`JobState`, :data:`LIVE_ORDER` (or
:data:`TERMINAL_STATES`) and :data:`STATE_AFTER`; both readers then know it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal, Protocol, TypeVar, get_args

from schemas import subjects as s

JobState = Literal[
    "submitted",
    "accepted",
    "rejected",
    "pending",
    "placed",
    "provisioning",
    "running",
    "degraded",
    "cancelling",
    "cancelled",
    "succeeded",
    "failed",
    "expired",
]
STATES: tuple[str, ...] = get_args(JobState)

TERMINAL_STATES: frozenset[str] = frozenset({"rejected", "failed", "cancelled", "succeeded", "expired"})
"""A job in one of these has ended: its reservations and instances are released once."""
CANCELLING = "cancelling"
"""An end was requested and is not reached yet; it stays until the release says how it ended."""
DEGRADED = "degraded"
"""A live job some of whose replicas fit nowhere for now (§8.1). Not a step of the job's life but
an overlay on ``placed``/``provisioning``/``running``: see :func:`overlay`."""
LIVE_ORDER: tuple[str, ...] = (
    "submitted",
    "accepted",
    "pending",
    "placed",
    "provisioning",
    "running",
    DEGRADED,
    CANCELLING,
)
"""The live (non-terminal) states in the order of a job's life."""
RANK: dict[str, int] = {
    **{state: i for i, state in enumerate(LIVE_ORDER)},
    **dict.fromkeys(TERMINAL_STATES, len(LIVE_ORDER)),
}
"""Lifecycle rank of each job state: a higher rank is later in the job's life."""

STATE_AFTER: dict[str, str] = {
    s.JOB_SUBMITTED: "submitted",
    s.JOB_ACCEPTED: "accepted",
    s.JOB_REJECTED: "rejected",
    s.PLACEMENT_DECIDED: "placed",
    s.PLACEMENT_FAILED: "failed",
    s.CLUSTER_PROVISIONING: "provisioning",
    s.CLUSTER_PROVISIONED: "running",
    s.CLUSTER_PROVISION_FAILED: "failed",
    s.JOB_CANCEL_REQUESTED: CANCELLING,
    s.JOB_EXPIRED: "expired",
}
"""The state each event type leads to. ``job.completed`` leads to its ``outcome``; the other
event types (``placement.released``, ``cluster.teardown_requested``, ``cluster.torn_down``,
and any added later) lead to no state of their own."""
RELEASES: tuple[str, ...] = (s.PLACEMENT_RELEASED, s.CLUSTER_TORN_DOWN)
"""The events that complete a requested cancel (whichever comes first)."""

_COMPLETED = s.JOB_COMPLETED
_RELEASED = s.PLACEMENT_RELEASED


def overlay(state: str, degraded_revision: int | None, decided_revision: int | None) -> str:
    """The state shown for a job whose base state (from the lifecycle events) is ``state``:
    ``degraded`` while the latest ``placement.degraded`` is of the job's latest revision (a
    later revision placed the missing replicas again), else ``state``. Order-independent:
    it compares revisions, not arrival order."""
    if degraded_revision is None or state in TERMINAL_STATES or state == CANCELLING:
        return state
    if decided_revision is not None and decided_revision > degraded_revision:
        return state
    return DEGRADED


def state_after(event_type: str, outcome: str | None = None) -> str | None:
    """The state an event leads to, None when it has none of its own."""
    return outcome if event_type == _COMPLETED else STATE_AFTER.get(event_type)


def shows_reason(state: str) -> bool:
    """Whether a job in ``state`` carries the reason of the event that led there."""
    return state in TERMINAL_STATES or state == CANCELLING


def next_state(
    current: str | None, event_type: str, *, outcome: str | None = None, reason: str | None = None
) -> str | None:
    """Fold one event, in arrival order, into a job's state. Never moves backwards; once an end
    is requested (``cancelling``) or reached, only teardown's ``placement.released`` (whose
    ``reason`` is its recorded end) moves it. Runs for every event the gateway sees: inline."""
    if event_type == _RELEASED:
        return reason if reason in TERMINAL_STATES else current
    new = outcome if event_type == _COMPLETED else STATE_AFTER.get(event_type)
    if new is None:
        return current
    if current is None:
        return new
    if current in TERMINAL_STATES or current == CANCELLING:
        return current
    if new in TERMINAL_STATES or RANK.get(new, -1) > RANK.get(current, -1):
        return new
    return current


class Fact(Protocol):
    """What one event said about a job, as :func:`settle` needs it (metadata's ``Mark``)."""

    @property
    def at(self) -> datetime: ...

    def key(self) -> tuple[datetime, str, str]:
        """Orders facts: time first, the rest only breaks ties."""
        ...


F = TypeVar("F", bound=Fact)


def cancelled_at(facts: Mapping[str, Fact]) -> datetime | None:
    """When a requested cancel completed, given the facts per event type: the later of the
    request and the first release; None while either is missing."""
    cancel = facts.get(s.JOB_CANCEL_REQUESTED)
    if cancel is None:
        return None
    released = [facts[k].at for k in RELEASES if k in facts]
    if not released:
        return None
    return max(cancel.at, min(released))


def settle(taken: list[tuple[str, F]]) -> tuple[tuple[str, F], list[tuple[str, F]]]:
    """The current state among the states taken (at least one), and the steps up to it.

    A terminal state wins over everything; of several, the earliest (a terminal state is
    final, so whatever came later did not happen to the job), and the steps are the live
    states taken until then. Otherwise the state of highest rank, not the last to arrive
    (the steps are then ``taken`` itself).
    """
    terminal = [t for t in taken if t[0] in TERMINAL_STATES]
    if terminal:
        final = min(terminal, key=lambda t: (t[1].key(), t[0]))
        return final, [t for t in taken if t[0] not in TERMINAL_STATES and t[1].at <= final[1].at] + [final]
    return max(taken, key=lambda t: (RANK.get(t[0], 0), t[1].key())), taken


def lifecycle_key(step: tuple[str, Fact]) -> tuple[int, datetime, str]:
    """Sort key of a job's history: lifecycle order, then time."""
    return (RANK.get(step[0], 0), step[1].at, step[0])


__all__ = [
    "CANCELLING",
    "DEGRADED",
    "LIVE_ORDER",
    "RANK",
    "RELEASES",
    "STATES",
    "STATE_AFTER",
    "TERMINAL_STATES",
    "Fact",
    "JobState",
    "cancelled_at",
    "lifecycle_key",
    "next_state",
    "overlay",
    "settle",
    "shows_reason",
    "state_after",
]
