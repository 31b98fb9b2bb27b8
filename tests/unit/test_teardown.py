"""Teardown's state machine, deadlines and orphan verdicts: pure, no NATS, no AWS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from schemas import events as ev
from schemas.jobs import Constraints, JobSpec, Resources, Workload
from schemas.lifecycle import JobLifecycle
from services.cloud.instances import InstanceInfo
from services.teardown import domain
from services.teardown.domain import Release, TerminateLate, apply

T0 = datetime(2026, 1, 1, tzinfo=UTC)
J = "job-1"


def spec(cluster: str = "dedicated", max_runtime_s: int | None = None) -> JobSpec:
    return JobSpec(
        name="x",
        technology="docker",
        replicas=2,
        resources=Resources(cpu=1, memory_mb=512),
        constraints=Constraints(),
        cluster=cluster,  # type: ignore[arg-type]
        workload=Workload(),
        strategy="best_fit",
        max_runtime_s=max_runtime_s,
    )


def accepted(cluster: str = "dedicated", max_runtime_s: int | None = None) -> ev.JobAccepted:
    return ev.JobAccepted(event_id="a", job_id=J, spec=spec(cluster, max_runtime_s), at=T0)


def decided(
    cluster: str = "shared", at: datetime = T0, max_runtime_s: int | msgspec.UnsetType | None = msgspec.UNSET
) -> ev.PlacementDecided:
    return ev.PlacementDecided(
        max_runtime_s=max_runtime_s,
        event_id="d",
        job_id=J,
        cluster=cluster,
        technology="docker",
        strategy="best_fit",
        assignments=[],
        candidates=[],
        at=at,
    )


def provisioned(*ids: str, at: datetime = T0) -> ev.ClusterProvisioned:
    return ev.ClusterProvisioned(
        event_id="p",
        job_id=J,
        at=at,
        instances=[ev.Instance(instance_id=i, instance_type="t3.medium", replica=n) for n, i in enumerate(ids)],
    )


CANCEL = ev.JobCancelRequested(event_id="c", job_id=J)
DONE = ev.JobCompleted(event_id="k", job_id=J, outcome="succeeded")
EXPIRED = ev.JobExpired(event_id="e", job_id=J, max_runtime_s=5)
PFAILED = ev.ClusterProvisionFailed(event_id="f", job_id=J, error_code="Unsupported", message="no")


def fold(*events: domain.TeardownEvent, rec: JobLifecycle | None = None) -> tuple[JobLifecycle, list[domain.Effect]]:
    effects: list[domain.Effect] = []
    for e in events:
        rec, eff = apply(rec, e, T0)
        effects.append(eff)
        if isinstance(eff, Release):  # the service performs it, then marks the record
            rec = domain.mark_released(rec, J)
    assert rec is not None
    return rec, effects


class TestReleaseExactlyOnce:
    @pytest.mark.parametrize("trigger", [CANCEL, DONE, EXPIRED, PFAILED])
    def test_each_trigger_releases_a_running_dedicated_job(self, trigger: domain.TeardownEvent) -> None:
        rec, effects = fold(accepted(), decided("dedicated"), provisioned("i-1", "i-2"), trigger)
        rel = effects[-1]
        assert isinstance(rel, Release) and rel.dedicated and rel.sweep
        assert rel.instance_ids == ("i-1", "i-2")
        assert rec.released and rec.end is not None

    def test_several_triggers_release_once_and_first_end_wins(self) -> None:
        rec, effects = fold(
            accepted(), decided("dedicated"), provisioned("i-1"), CANCEL, DONE, EXPIRED, PFAILED, CANCEL
        )
        assert sum(isinstance(e, Release) for e in effects) == 1
        assert rec.end == "cancelled"

    def test_shared_job_releases_the_reservation_without_a_cluster(self) -> None:
        rec, effects = fold(accepted("shared"), decided("shared"), DONE)
        rel = effects[-1]
        assert isinstance(rel, Release) and not rel.dedicated and not rel.sweep
        assert rec.end == "succeeded"

    def test_release_is_owed_again_until_marked(self) -> None:
        """A crash after the effects but before marking: the redelivered trigger releases again."""
        rec, eff = apply(None, accepted(), T0)
        rec, eff = apply(rec, CANCEL, T0)
        assert isinstance(eff, Release)
        rec, eff = apply(rec, CANCEL, T0)  # redelivered, record not yet marked
        assert isinstance(eff, Release)
        rec = domain.mark_released(rec, J)
        _, eff = apply(rec, CANCEL, T0)
        assert eff is None

    def test_instances_reported_after_release_are_terminated_without_new_release(self) -> None:
        rec, effects = fold(accepted(), CANCEL, decided("dedicated"), provisioned("i-9"))
        assert isinstance(effects[1], Release)
        assert effects[2] is None
        assert effects[3] == TerminateLate(("i-9",))
        assert rec.instance_ids == ["i-9"]

    def test_placement_failed_ends_the_job_with_nothing_to_release(self) -> None:
        failed = ev.PlacementFailed(event_id="x", job_id=J, reason="0/3 nodes")
        rec, effects = fold(accepted("shared"), failed, CANCEL)
        assert effects == [None, None, None]
        assert rec.end == "failed" and rec.released

    def test_end_of_an_untracked_job_releases_without_asking_ec2(self) -> None:
        """No record: a shared job without a limit (or one not yet accepted). No sweep by tag;
        instances reported later are terminated (TerminateLate) and the reaper is the backstop."""
        rec, eff = apply(None, CANCEL, T0)
        assert isinstance(eff, Release) and not eff.sweep and not eff.dedicated
        rec = domain.mark_released(rec, J)
        _, late = apply(rec, provisioned("i-1"), T0)
        assert late == TerminateLate(("i-1",))

    def test_dedicated_end_sweeps_by_tag(self) -> None:
        _, eff = fold(accepted("dedicated"), CANCEL)
        assert isinstance(eff[-1], Release) and eff[-1].sweep and eff[-1].dedicated
        failed = ev.ClusterProvisionFailed(event_id="f", job_id=J, error_code="Unsupported", message="no")
        _, eff2 = apply(None, failed, T0)
        assert isinstance(eff2, Release) and eff2.sweep and eff2.dedicated


def replaced(old: str, new: str, replica: int = 0) -> ev.ClusterInstanceReplaced:
    return ev.ClusterInstanceReplaced(
        event_id=f"r:{old}", job_id=J, replica=replica, old_instance_id=old, new_instance_id=new
    )


class TestReplacedInstances:
    """``cluster.instance_replaced`` (healing, §8.2): the record learns the new instance, so the
    job's end terminates it too, once; the record says which instance runs each replica."""

    def test_the_end_terminates_replacements_and_old_instances_alike(self) -> None:
        _, effects = fold(accepted(), decided("dedicated"), provisioned("i-1", "i-2"), replaced("i-1", "i-3"), CANCEL)
        assert effects[3] is None
        rel = effects[-1]
        assert isinstance(rel, Release) and rel.instance_ids == ("i-1", "i-2", "i-3") and rel.sweep
        assert sum(isinstance(e, Release) for e in effects) == 1

    def test_record_maps_replicas_to_current_instances_in_any_order(self) -> None:
        events = (decided("dedicated"), provisioned("i-1", "i-2"), replaced("i-1", "i-3"), replaced("i-3", "i-4"))
        rec, _ = fold(*events)
        rec2, _ = fold(*reversed(events))
        for r in (rec, rec2):
            assert r.replicas == {"i-1": 0, "i-2": 1, "i-3": 0, "i-4": 0}
            assert sorted(r.replaced) == ["i-1", "i-3"]
            assert sorted(r.instance_ids) == ["i-1", "i-2", "i-3", "i-4"]

    def test_replacement_reported_after_the_release_is_terminated_with_its_old_one(self) -> None:
        rec, effects = fold(accepted(), decided("dedicated"), provisioned("i-1"), CANCEL, replaced("i-1", "i-5"))
        assert effects[-1] == TerminateLate(("i-5", "i-1"))
        _, again = apply(rec, replaced("i-1", "i-5"), T0)
        assert again is None  # redelivered: nothing new

    def test_dedicated_decision_records_the_fallback_order(self) -> None:
        d = msgspec.structs.replace(
            decided("dedicated"),
            assignments=[ev.Assignment(replica=0, instance_type="m5.large")],
            candidates=[ev.Candidate(instance_type=t) for t in ("t3.medium", "m5.large", "c5.xlarge")],
        )
        rec, _ = fold(d)
        assert rec.instance_types == ["m5.large", "t3.medium", "c5.xlarge"]


class TestDeadline:
    def test_shared_job_runs_from_its_decision(self) -> None:
        rec, _ = fold(accepted("shared", 60), decided("shared", at=T0))
        assert rec.deadline == T0 + timedelta(seconds=60)

    def test_dedicated_job_runs_from_provisioned(self) -> None:
        rec, _ = fold(accepted("dedicated", 60), decided("dedicated"))
        assert rec.deadline is None
        rec, _ = fold(provisioned("i-1", at=T0 + timedelta(seconds=30)), rec=rec)
        assert rec.deadline == T0 + timedelta(seconds=90)

    def test_accepted_arriving_after_the_start_still_sets_the_deadline(self) -> None:
        rec, _ = fold(decided("shared"), accepted("shared", 10))
        assert rec.deadline == T0 + timedelta(seconds=10)

    def test_no_max_runtime_no_deadline_and_ended_jobs_have_none(self) -> None:
        rec, _ = fold(accepted("shared"), decided("shared"))
        assert rec.deadline is None
        rec, _ = fold(accepted("shared", 10), decided("shared"), CANCEL)
        assert rec.deadline is None

    def test_a_decision_that_carries_the_limit_needs_no_accepted(self) -> None:
        rec, _ = fold(decided("shared", at=T0, max_runtime_s=30))
        assert rec.deadline == T0 + timedelta(seconds=30)


class TestNothingToTrack:
    """Teardown skips its KV record for shared jobs with no runtime limit (the hot path)."""

    @pytest.mark.parametrize(
        ("event", "skip"),
        [
            (accepted("shared"), True),
            (accepted("shared", 60), False),
            (accepted("dedicated"), False),
            (decided("shared", max_runtime_s=None), True),
            (decided("shared", max_runtime_s=60), False),
            (decided("dedicated", max_runtime_s=None), False),
            # written before decisions carried the limit: unknown, so it is tracked
            (decided("shared"), False),
            (CANCEL, False),
        ],
    )
    def test_which_events_are_skipped(self, event: domain.TeardownEvent, skip: bool) -> None:
        assert domain.nothing_to_track(event) is skip

    def test_decision_wire_form_tells_absent_from_null(self) -> None:
        dec = msgspec.json.Decoder(ev.PlacementDecided)
        old = msgspec.json.encode(decided("shared"))
        assert b"max_runtime_s" not in old and dec.decode(old).max_runtime_s is msgspec.UNSET
        new = msgspec.json.encode(decided("shared", max_runtime_s=None))
        assert b'"max_runtime_s":null' in new and dec.decode(new).max_runtime_s is None


class TestDue:
    def test_due_lists_passed_deadlines_earliest_first(self) -> None:
        d = {"b": T0 + timedelta(seconds=1), "a": T0 + timedelta(seconds=2), "c": T0 + timedelta(seconds=10)}
        assert domain.due(d, T0 + timedelta(seconds=5)) == ["b", "a"]
        assert domain.due(d, T0) == []


def inst(job_id: str | None, launched: datetime) -> InstanceInfo:
    return InstanceInfo("i-1", "t3.medium", "running", None, job_id, 0, launched)


class TestOrphans:
    def test_unknown_job_is_orphaned_after_the_grace_since_launch(self) -> None:
        assert domain.orphan_reason(inst("ghost", T0), None, T0 + timedelta(seconds=5), 10) is None
        why = domain.orphan_reason(inst("ghost", T0), None, T0 + timedelta(seconds=10), 10)
        assert why is not None and "ghost" in why

    def test_untagged_job_is_orphaned(self) -> None:
        assert domain.orphan_reason(inst(None, T0), None, T0 + timedelta(seconds=11), 10) is not None

    def test_ended_job_is_orphaned_after_the_grace_since_its_end(self) -> None:
        rec = JobLifecycle(job_id=J, end="cancelled", ended_at=T0)
        assert domain.orphan_reason(inst(J, T0), rec, T0 + timedelta(seconds=3), 10) is None
        assert domain.orphan_reason(inst(J, T0), rec, T0 + timedelta(seconds=10), 10) == "job cancelled"

    def test_live_job_is_never_orphaned(self) -> None:
        rec = JobLifecycle(job_id=J, cluster="dedicated")
        assert domain.orphan_reason(inst(J, T0), rec, T0 + timedelta(days=30), 10) is None
