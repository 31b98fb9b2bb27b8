"""The gateway's job-state view, bounded and snapshotted (issue #21): pure, no server.

Property: for any events and forget passes, and any split point, restoring the snapshot of the
prefix and folding the tail gives exactly the view a full fold gives; a live job is never
dropped; a forgotten job is not brought back by a late event of its end.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import subjects as s
from schemas.states import TERMINAL_STATES
from services.gateway.lifecycle import VIEW_SUBJECTS, JobStates, ViewSnapshot, unknown_job

KEEP = 100.0
T0 = 1_700_000_000.0


def event(type_: str, job_id: str, at: float, *, extra: str | None = None, tenant: str = s.DEFAULT_TENANT) -> bytes:
    body: dict[str, object] = {
        "type": type_,
        "event_id": f"{job_id}:{type_}",
        "job_id": job_id,
        "at": datetime.fromtimestamp(at, UTC).isoformat(),
        "tenant": tenant,
    }
    if extra is not None:
        body["outcome" if type_ == s.JOB_COMPLETED else "reason"] = extra
    return msgspec.json.encode(body)


# A job's life: submitted, then any of the folded events, in causal order (submitted first).
ENDINGS: list[list[tuple[str, str | None]]] = [
    [],
    [(s.JOB_REJECTED, None)],
    [(s.PLACEMENT_FAILED, None)],
    [(s.CLUSTER_PROVISION_FAILED, None)],
    [(s.JOB_CANCEL_REQUESTED, None)],
    [(s.JOB_CANCEL_REQUESTED, None), (s.PLACEMENT_RELEASED, "cancelled")],
    [(s.JOB_COMPLETED, "succeeded")],
    [(s.JOB_COMPLETED, "failed"), (s.PLACEMENT_RELEASED, "failed")],
    [(s.JOB_EXPIRED, None), (s.PLACEMENT_RELEASED, "expired")],
]

Op = tuple[str, bytes | float]


@st.composite
def histories(draw: st.DrawFn) -> list[Op]:
    """Events of up to 12 jobs interleaved (each job's in order, times increasing) and forget passes."""
    n = draw(st.integers(min_value=1, max_value=12))
    lives: list[list[Op]] = []
    for i in range(n):
        at = T0 + draw(st.floats(min_value=0, max_value=400))
        tenant = draw(st.sampled_from([s.DEFAULT_TENANT, "acme"]))
        life: list[Op] = [("e", event(s.JOB_SUBMITTED, f"j{i}", at, tenant=tenant))]
        for type_, extra in draw(st.sampled_from(ENDINGS)):
            at += draw(st.floats(min_value=0, max_value=100))
            life.append(("e", event(type_, f"j{i}", at, extra=extra, tenant=tenant)))
        lives.append(life)
    ops: list[Op] = []
    while any(lives):
        live = [life for life in lives if life]
        ops.append(draw(st.sampled_from(live)).pop(0))
        if draw(st.booleans()):
            ops.append(("f", T0 + draw(st.floats(min_value=0, max_value=800))))
    return ops


def run(view: JobStates, ops: list[Op]) -> JobStates:
    for kind, arg in ops:
        if kind == "e":
            assert isinstance(arg, bytes)
            view.apply(arg)
        else:
            assert isinstance(arg, float)
            view.forget(arg)
    return view


def picture(view: JobStates) -> tuple[dict[str, str], dict[str, str], dict[str, float], float]:
    return dict(view.states), dict(view.tenants), dict(view.ended), view.horizon


@settings(max_examples=300, deadline=None)
@given(ops=histories(), split=st.integers(min_value=0))
def test_snapshot_of_any_prefix_plus_the_tail_is_the_full_fold(ops: list[Op], split: int) -> None:
    k = split % (len(ops) + 1)
    full = run(JobStates(KEEP), ops)
    prefix = run(JobStates(KEEP), ops[:k])
    restored = JobStates(KEEP)
    restored.restore(prefix.snapshot(), {"JOBS": 7})
    assert restored.applied == {**dict.fromkeys(VIEW_SUBJECTS, 0), "JOBS": 7}
    assert picture(run(restored, ops[k:])) == picture(full)
    # and they forget alike from here on
    later = T0 + 10_000
    assert full.forget(later) == restored.forget(later)
    assert picture(full) == picture(restored)


@settings(max_examples=300, deadline=None)
@given(ops=histories())
def test_a_live_job_is_never_lost_and_an_ended_one_only_after_the_window(ops: list[Op]) -> None:
    reference = run(JobStates(float("inf")), [op for op in ops if op[0] == "e"])
    view = run(JobStates(KEEP), ops)
    for job_id, state in reference.states.items():
        if state not in TERMINAL_STATES:
            assert view.states.get(job_id) == state, job_id
            assert view.tenant(job_id) == reference.tenant(job_id)
        elif job_id in view.states:
            assert view.states[job_id] == state
        else:  # forgotten: it had ended at least KEEP before the last forget pass
            assert reference.ended[job_id] + KEEP <= view.horizon
    assert set(view.ended) == {j for j, st_ in view.states.items() if st_ in TERMINAL_STATES}
    assert set(view.tenants) <= set(view.states)


def test_a_forgotten_job_stays_forgotten() -> None:
    view = JobStates(KEEP)
    view.apply(event(s.JOB_SUBMITTED, "j", T0, tenant="acme"))
    view.apply(event(s.JOB_COMPLETED, "j", T0 + 1, extra="succeeded"))
    assert view.forget(T0 + 1 + KEEP - 0.5) == 0 and view.states["j"] == "succeeded"
    assert view.forget(T0 + 1 + KEEP) == 1
    assert "j" not in view.states and "j" not in view.tenants and "j" not in view.ended
    # teardown's release (or a redelivered end) of the forgotten job arrives late
    view.apply(event(s.PLACEMENT_RELEASED, "j", T0 + 1, extra="succeeded"))
    view.apply(event(s.JOB_COMPLETED, "j", T0 + 1, extra="succeeded"))
    assert "j" not in view.states
    # a snapshot taken now does not bring it back either
    again = JobStates(KEEP)
    again.restore(view.snapshot(), {})
    again.apply(event(s.PLACEMENT_RELEASED, "j", T0 + 1, extra="succeeded"))
    assert "j" not in again.states


def test_the_end_time_is_the_first_ending_event_and_our_own_publish_uses_the_clock() -> None:
    view = JobStates(KEEP, clock=lambda: T0 + 50)
    view.apply(event(s.JOB_SUBMITTED, "a", T0))
    view.apply(event(s.JOB_COMPLETED, "a", T0 + 3, extra="failed"))
    view.apply(event(s.PLACEMENT_RELEASED, "a", T0 + 9, extra="failed"))
    view.apply(event(s.JOB_SUBMITTED, "b", T0))
    view.note("b", s.JOB_COMPLETED, outcome="succeeded")
    assert view.ended == {"a": T0 + 3, "b": T0 + 50}
    view.note("c", s.JOB_CANCEL_REQUESTED)  # cancelling is not an end: never forgotten
    assert view.forget(T0 + 10_000) == 2 and view.states == {"c": "cancelling"}


def test_a_snapshot_of_another_version_or_garbage_is_refused_and_leaves_the_view_alone() -> None:
    view = JobStates(KEEP)
    with pytest.raises(ValueError, match="version"):
        view.restore(msgspec.msgpack.encode(ViewSnapshot(version=99, states={"x": "running"})), {})
    with pytest.raises(msgspec.DecodeError):
        view.restore(b"\xc1garbage", {})
    assert view.states == {}


def test_the_404_says_ended_jobs_are_forgotten() -> None:
    message = unknown_job("j-1", 3600.0)
    assert message.startswith("unknown job j-1") and "3600 s" in message and "job.get" in message
