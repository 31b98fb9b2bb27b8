"""Resizing dedicated clusters (§8.3): the order revisions apply in, which replicas a resize
launches or terminates, healing not resurrecting a removed replica, and teardown's record of
revisions. Pure logic and the handler with fakes (no NATS, no AWS)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import events as ev
from schemas.lifecycle import JobLifecycle
from services.cloud.instances import InstanceInfo
from services.provisioner.domain import Step, plan_launch, revision_step
from services.provisioner.handlers import Provisioner
from services.provisioner.healing import lost_instances
from services.provisioner.scaling import NotYet, Revisions
from services.runtime.config import AwsConf
from services.teardown import domain as teardown
from tests.support.provisioner import FakeDelivery, FakeEc2, FakePublisher, no_sleep

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def decided(job_id: str, revision: int, replicas: int) -> ev.PlacementDecided:
    return ev.PlacementDecided(
        event_id=ev.revision_event_id(job_id, "placement.decided", revision),
        job_id=job_id,
        cluster="dedicated",
        technology="docker",
        strategy="best_fit",
        assignments=[ev.Assignment(replica=r, instance_type="t3.medium") for r in range(replicas)],
        candidates=[ev.Candidate(instance_type="t3.medium"), ev.Candidate(instance_type="m5.large")],
        revision=revision,
        replicas=replicas,
        changes=[] if revision == 1 else [ev.Change(replica=0, reason="scale")],
    )


def live(job_id: str, replicas: range) -> list[InstanceInfo]:
    return [InstanceInfo(f"i-{r}", "t3.medium", "running", None, job_id, r) for r in replicas]


class TestRevisionStep:
    def test_the_first_launch_goes_without_a_record(self) -> None:
        assert revision_step(None, 1) is Step.GO
        assert revision_step(None, 2) is Step.WAIT

    def test_a_revision_waits_for_the_one_before_and_for_teardown_to_know_it(self) -> None:
        rec = JobLifecycle(job_id="j", cluster="dedicated", revision=2, wanted=4, started_at=T0)
        assert revision_step(rec, 2) is Step.GO
        assert revision_step(rec, 3) is Step.WAIT  # teardown has not recorded revision 3 yet
        rec.revision = 3
        assert revision_step(rec, 3) is Step.WAIT  # revision 2 is not provisioned yet
        rec.provisioned_revision = 2
        assert revision_step(rec, 3) is Step.GO

    def test_a_provisioned_revision_is_done_and_an_ended_job_ended(self) -> None:
        rec = JobLifecycle(job_id="j", revision=3, started_at=T0, provisioned_revision=3)
        assert [revision_step(rec, n) for n in (1, 2, 3)] == [Step.DONE] * 3
        rec.end = "cancelled"
        assert revision_step(rec, 4) is Step.ENDED

    @given(st.integers(1, 50), st.integers(0, 50), st.integers(0, 50))
    def test_at_most_one_revision_goes_at_a_time(self, seen: int, provisioned: int, _: int) -> None:
        rec = JobLifecycle(job_id="j", revision=seen, provisioned_revision=provisioned, started_at=T0)
        going = [n for n in range(1, 60) if revision_step(rec, n) is Step.GO]
        assert len(going) <= 1
        assert all(n == max(provisioned, 1) + 1 for n in going)


class TestPlan:
    @given(st.integers(1, 12), st.integers(1, 12))
    def test_growth_launches_the_new_numbers_and_shrink_removes_the_highest(self, have: int, want: int) -> None:
        plan = plan_launch(decided("j", 2, want).assignments, live("j", range(have)))
        assert sorted(plan.keep) == list(range(min(have, want)))
        assert [a.replica for a in plan.missing] == list(range(have, want))
        assert sorted(i.replica or 0 for i in plan.extra) == list(range(want, have))


def revisions(ec2: FakeEc2, rec: JobLifecycle | None) -> tuple[Revisions, FakePublisher]:
    pub = FakePublisher()
    records = {"j": rec}

    async def ended(job_id: str) -> bool:
        return False

    async def record(job_id: str) -> JobLifecycle | None:
        return records.get(job_id)

    p = Provisioner(ec2, pub, ended, AwsConf(), max_deliver=8, sleep=no_sleep)
    return Revisions(p, record, wait_s=1.0, sleep=no_sleep), pub


def fleet(replicas: int) -> FakeEc2:
    ec2 = FakeEc2()
    for r in range(replicas):
        ec2.add(InstanceInfo(f"i-old{r}", "t3.medium", "running", None, "j", r))
    return ec2


def ready(revision: int, wanted: int) -> JobLifecycle:
    rec = JobLifecycle(job_id="j", cluster="dedicated", revision=revision, wanted=wanted, started_at=T0)
    rec.provisioned_revision = revision - 1
    return rec


class TestResize:
    async def test_growth_launches_the_extra_replicas_and_reports_the_whole_set(self) -> None:
        ec2 = fleet(2)
        rev, pub = revisions(ec2, ready(2, 4))
        await rev.on_decided(decided("j", 2, 4), FakeDelivery())
        assert [r for r, _ in ec2.launch_calls] == [2, 3] and not ec2.terminated
        (event,) = pub.events
        assert isinstance(event, ev.ClusterProvisioned)
        assert event.event_id == "j:cluster.provisioned:2" and event.revision == 2
        assert [i.replica for i in event.instances] == [0, 1, 2, 3]
        assert all(i.state == "running" for i in event.instances)

    async def test_shrink_terminates_the_highest_replicas_and_launches_nothing(self) -> None:
        ec2 = fleet(4)
        rev, pub = revisions(ec2, ready(3, 1))
        await rev.on_decided(decided("j", 3, 1), FakeDelivery())
        assert not ec2.launch_calls and sorted(ec2.terminated) == ["i-old1", "i-old2", "i-old3"]
        (event,) = pub.events
        assert isinstance(event, ev.ClusterProvisioned) and [i.instance_id for i in event.instances] == ["i-old0"]

    async def test_a_redelivery_after_the_revision_was_reported_does_nothing(self) -> None:
        ec2 = fleet(4)
        rec = ready(2, 4)
        rec.provisioned_revision = 2
        rev, pub = revisions(ec2, rec)
        await rev.on_decided(decided("j", 2, 4), FakeDelivery())
        await rev.on_decided(decided("j", 1, 2), FakeDelivery())  # the first launch, late: must not shrink
        assert not ec2.launch_calls and not ec2.terminated and not pub.events

    async def test_a_revision_before_its_turn_holds_then_naks(self) -> None:
        ec2 = fleet(2)
        rev, pub = revisions(ec2, ready(2, 4))
        d = FakeDelivery()
        with pytest.raises(NotYet):
            await rev.on_decided(decided("j", 3, 1), d)
        assert d.pings > 0 and not ec2.launch_calls and not ec2.terminated and not pub.events

    async def test_an_ended_job_is_not_resized(self) -> None:
        rec = ready(2, 4)
        rec.end = "cancelled"
        ec2 = fleet(2)
        rev, pub = revisions(ec2, rec)
        await rev.on_decided(decided("j", 2, 4), FakeDelivery())
        assert not ec2.launch_calls and not pub.events

    async def test_no_capacity_anywhere_reports_what_runs_and_keeps_the_job(self) -> None:
        ec2 = fleet(2)
        ec2.no_capacity = {"t3.medium", "m5.large"}
        rev, pub = revisions(ec2, ready(2, 3))
        await rev.on_decided(decided("j", 2, 3), FakeDelivery())
        (event,) = pub.events
        assert isinstance(event, ev.ClusterProvisioned) and [i.replica for i in event.instances] == [0, 1]

    async def test_falls_back_along_the_ranked_types(self) -> None:
        ec2 = fleet(1)
        ec2.no_capacity = {"t3.medium"}
        rev, pub = revisions(ec2, ready(2, 2))
        await rev.on_decided(decided("j", 2, 2), FakeDelivery())
        assert ec2.launch_calls == [(1, "t3.medium"), (1, "m5.large")]
        (event,) = pub.events
        assert isinstance(event, ev.ClusterProvisioned) and event.instances[1].instance_type == "m5.large"


class TestRecordAndHealing:
    def test_teardown_keeps_the_latest_revision_and_the_provisioned_one(self) -> None:
        rec, _ = teardown.apply(None, decided("j", 1, 2), T0)
        rec, _ = teardown.apply(rec, decided("j", 3, 1), T0)
        rec, _ = teardown.apply(rec, decided("j", 2, 4), T0)  # late: changes nothing
        assert (rec.revision, rec.wanted) == (3, 1)
        provisioned = ev.ClusterProvisioned(event_id="x", job_id="j", instances=[], revision=2)
        rec, _ = teardown.apply(rec, provisioned, T0)
        rec, _ = teardown.apply(rec, ev.ClusterProvisioned(event_id="y", job_id="j", instances=[]), T0)
        assert rec.provisioned_revision == 2 and rec.started_at == provisioned.at

    def test_a_replica_removed_by_a_shrink_is_not_healed(self) -> None:
        rec = JobLifecycle(
            job_id="j",
            cluster="dedicated",
            started_at=T0,
            instance_ids=["i-0", "i-1", "i-2"],
            replicas={"i-0": 0, "i-1": 1, "i-2": 2},
            wanted=1,
        )
        dead = [InstanceInfo(f"i-{r}", "t3.medium", "terminated", None, "j", r) for r in (1, 2)]
        assert lost_instances([rec], [*live("j", range(1)), *dead]) == []
        rec.wanted = 2
        assert [lost.replica for lost in lost_instances([rec], [*live("j", range(1)), *dead])] == [1]
