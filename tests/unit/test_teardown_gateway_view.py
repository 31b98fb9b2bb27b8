"""The gateway's job-state fold (what job.cancel / job.complete decide on): pure."""

from __future__ import annotations

import pytest

from schemas import subjects as s
from schemas.states import TERMINAL_STATES, next_state
from services.gateway.lifecycle import VIEW_SUBJECTS, JobStates


def fold(*steps: tuple[str, str | None]) -> str | None:
    state: str | None = None
    for event_type, extra in steps:
        state = next_state(state, event_type, outcome=extra, reason=extra)
    return state


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([(s.JOB_SUBMITTED, None)], "submitted"),
        ([(s.JOB_SUBMITTED, None), (s.JOB_ACCEPTED, None), (s.PLACEMENT_DECIDED, None)], "placed"),
        ([(s.PLACEMENT_DECIDED, None), (s.CLUSTER_PROVISIONING, None), (s.CLUSTER_PROVISIONED, None)], "running"),
        # out of order across streams: never backwards
        ([(s.CLUSTER_PROVISIONED, None), (s.JOB_ACCEPTED, None), (s.PLACEMENT_DECIDED, None)], "running"),
        ([(s.JOB_ACCEPTED, None), (s.JOB_REJECTED, None)], "rejected"),
        ([(s.JOB_ACCEPTED, None), (s.PLACEMENT_FAILED, None)], "failed"),
        ([(s.CLUSTER_PROVISIONING, None), (s.CLUSTER_PROVISION_FAILED, None)], "failed"),
        ([(s.PLACEMENT_DECIDED, None), (s.JOB_COMPLETED, "succeeded")], "succeeded"),
        ([(s.PLACEMENT_DECIDED, None), (s.JOB_EXPIRED, None)], "expired"),
        # an end requested stays until teardown's release says how it ended
        ([(s.PLACEMENT_DECIDED, None), (s.JOB_CANCEL_REQUESTED, None)], "cancelling"),
        ([(s.JOB_CANCEL_REQUESTED, None), (s.JOB_COMPLETED, "succeeded")], "cancelling"),
        ([(s.JOB_CANCEL_REQUESTED, None), (s.PLACEMENT_RELEASED, "cancelled")], "cancelled"),
        ([(s.JOB_COMPLETED, "failed"), (s.JOB_EXPIRED, None)], "failed"),
        ([(s.JOB_COMPLETED, "failed"), (s.PLACEMENT_RELEASED, "failed")], "failed"),
        # a release whose reason is not an end state changes nothing
        ([(s.PLACEMENT_DECIDED, None), (s.PLACEMENT_RELEASED, None)], "placed"),
        ([(s.CLUSTER_TORN_DOWN, None)], None),
    ],
)
def test_next_state(steps: list[tuple[str, str | None]], expected: str | None) -> None:
    assert fold(*steps) == expected


def test_view_ignores_garbage_and_events_without_job() -> None:
    v = JobStates()
    v.apply(b"\x00not json")
    v.apply(b'{"type": "node.status", "node_id": "n1"}')
    v.apply(b'{"type": "job.submitted", "job_id": "j1", "spec": {}}')
    assert v.states == {"j1": "submitted"}


def test_the_view_folds_every_event_that_changes_an_answer() -> None:
    """An event left out of VIEW_SUBJECTS must leave a live job live: cancel and complete
    answer the same for submitted, accepted, placed, provisioning and running."""
    folded = {subject for subjects in VIEW_SUBJECTS.values() for subject in subjects}
    for spec in (s.JOBS, s.PLACEMENTS, s.CLUSTERS):
        assert spec.name in VIEW_SUBJECTS
        for subject in spec.subjects:
            if subject in folded:
                continue
            after = next_state("submitted", subject, outcome="succeeded", reason="cancelled")
            assert after not in TERMINAL_STATES and after != "cancelling", subject
    assert s.JOB_SUBMITTED in folded  # existence: 404 otherwise
