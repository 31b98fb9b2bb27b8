"""The job state machine (schemas.states): tables, the arrival-order fold, the order-free settle."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import subjects as s
from schemas.states import (
    CANCELLING,
    LIVE_ORDER,
    RANK,
    RELEASES,
    STATE_AFTER,
    STATES,
    TERMINAL_STATES,
    cancelled_at,
    lifecycle_key,
    next_state,
    settle,
    shows_reason,
    state_after,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class F:
    """A fact as settle needs it (time, and a key ordering facts)."""

    at: datetime
    tie: str = ""

    def key(self) -> tuple[datetime, str, str]:
        return (self.at, self.tie, "")


def at(seconds: float) -> F:
    return F(T0 + timedelta(seconds=seconds))


class TestTables:
    def test_every_state_is_live_or_terminal_once(self) -> None:
        assert set(LIVE_ORDER) | TERMINAL_STATES == set(STATES)
        assert not set(LIVE_ORDER) & TERMINAL_STATES
        assert set(RANK) == set(STATES)

    def test_live_states_rank_in_lifecycle_order_and_terminal_states_last(self) -> None:
        ranks = [RANK[state] for state in LIVE_ORDER]
        assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
        assert {RANK[t] for t in TERMINAL_STATES} == {max(ranks) + 1}

    def test_events_lead_to_known_states_and_live_in_a_stream(self) -> None:
        stored = set(s.JOBS.subjects) | set(s.PLACEMENTS.subjects) | set(s.CLUSTERS.subjects)
        assert set(STATE_AFTER) <= stored
        assert set(STATE_AFTER.values()) <= set(STATES)
        assert set(RELEASES) <= stored

    @pytest.mark.parametrize(
        ("event_type", "outcome", "expected"),
        [
            (s.JOB_SUBMITTED, None, "submitted"),
            (s.JOB_ACCEPTED, None, "accepted"),
            (s.JOB_REJECTED, None, "rejected"),
            (s.PLACEMENT_DECIDED, None, "placed"),
            (s.PLACEMENT_FAILED, None, "failed"),
            (s.CLUSTER_PROVISIONING, None, "provisioning"),
            (s.CLUSTER_PROVISIONED, None, "running"),
            (s.CLUSTER_PROVISION_FAILED, None, "failed"),
            (s.JOB_CANCEL_REQUESTED, None, "cancelling"),
            (s.JOB_EXPIRED, None, "expired"),
            (s.JOB_COMPLETED, "succeeded", "succeeded"),
            (s.JOB_COMPLETED, "failed", "failed"),
            (s.PLACEMENT_RELEASED, None, None),
            (s.CLUSTER_TEARDOWN_REQUESTED, None, None),
            (s.CLUSTER_TORN_DOWN, None, None),
            ("job.added_later", None, None),
        ],
    )
    def test_state_after(self, event_type: str, outcome: str | None, expected: str | None) -> None:
        assert state_after(event_type, outcome) == expected

    @pytest.mark.parametrize("state", STATES)
    def test_a_reason_shows_once_an_end_is_requested_or_reached(self, state: str) -> None:
        assert shows_reason(state) == (state in TERMINAL_STATES or state == CANCELLING)


class TestNextState:
    @pytest.mark.parametrize(
        ("current", "event_type", "extra", "expected"),
        [
            (None, s.JOB_SUBMITTED, None, "submitted"),
            (None, s.CLUSTER_TORN_DOWN, None, None),
            ("running", s.JOB_ACCEPTED, None, "running"),  # never backwards
            ("accepted", s.CLUSTER_PROVISIONED, None, "running"),
            ("running", s.JOB_CANCEL_REQUESTED, None, "cancelling"),
            ("cancelling", s.JOB_COMPLETED, "succeeded", "cancelling"),  # an end requested stays
            ("cancelling", s.JOB_EXPIRED, None, "cancelling"),
            ("cancelling", s.PLACEMENT_RELEASED, "cancelled", "cancelled"),
            ("succeeded", s.JOB_EXPIRED, None, "succeeded"),  # the first end wins
            ("succeeded", s.PLACEMENT_RELEASED, "expired", "expired"),  # teardown's record is the word
            ("placed", s.PLACEMENT_RELEASED, None, "placed"),
            ("placed", s.PLACEMENT_RELEASED, "not a state", "placed"),
            ("placed", s.JOB_COMPLETED, "failed", "failed"),
        ],
    )
    def test_one_step(self, current: str | None, event_type: str, extra: str | None, expected: str | None) -> None:
        assert next_state(current, event_type, outcome=extra, reason=extra) == expected


LIVE_EVENTS = (s.JOB_SUBMITTED, s.JOB_ACCEPTED, s.PLACEMENT_DECIDED, s.CLUSTER_PROVISIONING, s.CLUSTER_PROVISIONED)
END_EVENTS: tuple[tuple[str, str | None], ...] = (
    (s.JOB_REJECTED, None),
    (s.PLACEMENT_FAILED, None),
    (s.CLUSTER_PROVISION_FAILED, None),
    (s.JOB_CANCEL_REQUESTED, None),
    (s.JOB_EXPIRED, None),
    (s.JOB_COMPLETED, "succeeded"),
    (s.JOB_COMPLETED, "failed"),
)


def fold(events: list[tuple[str, str | None]]) -> str | None:
    state: str | None = None
    for event_type, extra in events:
        state = next_state(state, event_type, outcome=extra, reason=extra)
    return state


@st.composite
def live_with_at_most_one_end(draw: st.DrawFn) -> list[tuple[str, str | None]]:
    events: list[tuple[str, str | None]] = [(t, None) for t in draw(st.lists(st.sampled_from(LIVE_EVENTS)))]
    end = draw(st.none() | st.sampled_from(END_EVENTS))
    if end is not None:
        events.append(end)
    return events


class TestOrder:
    @given(live_with_at_most_one_end(), st.randoms(use_true_random=False))
    def test_folding_in_any_order_gives_the_stream_order_state(
        self, events: list[tuple[str, str | None]], rnd: random.Random
    ) -> None:
        """Live events, and at most one end: the order does not matter (several ends, or a
        release, do depend on order: the first end, or the release, wins)."""
        shuffled = list(events)
        rnd.shuffle(shuffled)
        assert fold(shuffled) == fold(events)

    @given(live_with_at_most_one_end(), st.randoms(use_true_random=False))
    def test_the_fold_agrees_with_settle_when_times_follow_the_stream(
        self, events: list[tuple[str, str | None]], rnd: random.Random
    ) -> None:
        """The gateway (arrival order) and metadata (settle) agree while at most one end is known."""
        taken = [(state_after(t, extra), at(i)) for i, (t, extra) in enumerate(events)]
        steps = [(state, fact) for state, fact in taken if state is not None]
        rnd.shuffle(steps)
        expected = fold(events)
        if expected is None:
            assert not steps
            return
        (state, _), _ = settle(steps)
        assert state == expected

    @given(live_with_at_most_one_end(), st.sampled_from(sorted(TERMINAL_STATES)))
    def test_the_release_decides_whatever_came_before(
        self, events: list[tuple[str, str | None]], recorded: str
    ) -> None:
        assert fold([*events, (s.PLACEMENT_RELEASED, recorded)]) == recorded


class TestSettle:
    def test_highest_rank_wins_not_the_last_to_arrive(self) -> None:
        (state, _), steps = settle([("running", at(1)), ("placed", at(2)), ("accepted", at(3))])
        assert state == "running" and len(steps) == 3

    def test_the_earliest_end_wins_and_later_live_steps_did_not_happen(self) -> None:
        taken = [("placed", at(1)), ("succeeded", at(2)), ("expired", at(3)), ("cancelling", at(4))]
        (state, fact), steps = settle(taken)
        assert (state, fact) == ("succeeded", at(2))
        assert [t[0] for t in steps] == ["placed", "succeeded"]

    def test_ends_at_the_same_time_break_ties_by_key_then_name(self) -> None:
        (state, _), _ = settle([("succeeded", at(1)), ("failed", at(1))])
        assert state == "failed"
        (state, _), _ = settle([("succeeded", F(T0, "a")), ("failed", F(T0, "b"))])
        assert state == "succeeded"

    def test_history_sorts_in_lifecycle_order_then_time(self) -> None:
        steps = [("running", at(1)), ("submitted", at(3)), ("placed", at(0)), ("cancelling", at(2))]
        assert [t[0] for t in sorted(steps, key=lifecycle_key)] == ["submitted", "placed", "running", "cancelling"]


class TestCancelledAt:
    @pytest.mark.parametrize(
        ("facts", "expected"),
        [
            ({}, None),
            ({s.JOB_CANCEL_REQUESTED: 5}, None),
            ({s.PLACEMENT_RELEASED: 5}, None),
            ({s.JOB_CANCEL_REQUESTED: 5, s.PLACEMENT_RELEASED: 7}, 7),
            ({s.JOB_CANCEL_REQUESTED: 5, s.PLACEMENT_RELEASED: 3}, 5),  # released first: done at the request
            ({s.JOB_CANCEL_REQUESTED: 1, s.PLACEMENT_RELEASED: 9, s.CLUSTER_TORN_DOWN: 4}, 4),  # the first release
            ({s.JOB_CANCEL_REQUESTED: 1, s.CLUSTER_TORN_DOWN: 2}, 2),
            ({s.JOB_CANCEL_REQUESTED: 1, s.CLUSTER_TEARDOWN_REQUESTED: 2}, None),
        ],
    )
    def test_request_plus_first_release(self, facts: dict[str, float], expected: float | None) -> None:
        got = cancelled_at({k: at(v) for k, v in facts.items()})
        assert got == (None if expected is None else at(expected).at)
