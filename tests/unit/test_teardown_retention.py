"""Which JOB_LIFECYCLE records teardown forgets, and what the reaper does once one is gone (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from schemas import events as ev
from schemas.lifecycle import JobLifecycle
from services.cloud.instances import InstanceInfo
from services.teardown import domain

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
KEEP = 3600.0


def test_only_ended_and_released_records_retire() -> None:
    assert domain.retired_at(None) is None
    assert domain.retired_at(JobLifecycle(job_id="live")) is None
    ending = JobLifecycle(job_id="ending", end="cancelled", ended_at=NOW)  # release still owed
    assert domain.retired_at(ending) is None
    done = JobLifecycle(job_id="done", end="cancelled", ended_at=NOW, released=True)
    assert domain.retired_at(done) == NOW
    legacy = JobLifecycle(job_id="legacy", end="failed", released=True)  # before ended_at was kept
    assert domain.retired_at(legacy) == datetime.min.replace(tzinfo=UTC)


@given(ages=st.dictionaries(st.text(min_size=1, max_size=4), st.floats(min_value=-10, max_value=3 * KEEP)))
def test_forgettable_is_exactly_the_records_past_the_window_oldest_first(ages: dict[str, float]) -> None:
    retired = {job_id: (NOW - timedelta(seconds=age), i) for i, (job_id, age) in enumerate(ages.items())}
    out = domain.forgettable(retired, NOW, KEEP)
    assert {j for j, _ in out} == {
        j for j, age in ages.items() if NOW - timedelta(seconds=age) <= NOW - timedelta(seconds=KEEP)
    }
    assert all(retired[j][1] == rev for j, rev in out)  # deleted only at the revision seen
    assert [retired[j][0] for j, _ in out] == sorted(retired[j][0] for j, _ in out)


def test_a_record_ended_by_an_event_and_then_released_retires_at_its_end() -> None:
    rec, effect = domain.apply(None, ev.JobCompleted(event_id="e", job_id="j", outcome="succeeded"), NOW)
    assert isinstance(effect, domain.Release) and domain.retired_at(rec) is None
    rec = domain.mark_released(rec, "j")
    assert domain.retired_at(rec) == NOW
    assert domain.forgettable({"j": (NOW, 7)}, NOW + timedelta(seconds=KEEP), KEEP) == [("j", 7)]
    assert domain.forgettable({"j": (NOW, 7)}, NOW + timedelta(seconds=KEEP - 1), KEEP) == []


def test_an_instance_of_a_forgotten_job_is_reaped_as_for_an_unknown_job_once_past_the_grace() -> None:
    """A record is forgotten only after its job was released (its instances terminated); an
    instance that survived anyway has no record left and goes as an unknown job's would."""
    grace = 300.0
    old = InstanceInfo("i-1", "t3.medium", "running", None, "gone", 0, NOW - timedelta(seconds=KEEP + 10))
    assert domain.orphan_reason(old, None, NOW, grace) == "job gone unknown"
    young = InstanceInfo("i-2", "t3.medium", "running", None, "gone", 0, NOW - timedelta(seconds=10))
    assert domain.orphan_reason(young, None, NOW, grace) is None  # may still be launching for a live job
