"""Healing (§8.2): which instances need replacing (pure), and the replacement handler with fakes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import events as ev
from schemas.lifecycle import JobLifecycle
from services.cloud.errors import AwsError
from services.cloud.instances import InstanceInfo
from services.provisioner.handlers import Provisioner
from services.provisioner.healer import Healer, lost_event
from services.provisioner.healing import (
    ALIVE,
    MISSING,
    LostInstance,
    lost_instances,
    plan_replacement,
    replacement_token,
    replacement_types,
    running_dedicated,
)
from services.runtime.config import AwsConf
from tests.support.provisioner import FakeDelivery, FakeEc2, FakePublisher, no_sleep

T0 = datetime(2026, 1, 1, tzinfo=UTC)
J = "job-1"


def running(job_id: str = J, **instances: int) -> JobLifecycle:
    """The record of a running dedicated job whose instances (id -> replica) were reported."""
    return JobLifecycle(
        job_id=job_id,
        cluster="dedicated",
        started_at=T0,
        instance_ids=list(instances),
        replicas=dict(instances),
        instance_types=["t3.medium", "m5.large"],
    )


def inst(iid: str, replica: int, state: str = "running", job_id: str = J, minute: int = 0) -> InstanceInfo:
    return InstanceInfo(
        iid, "t3.medium", state, "10.0.0.1", job_id, replica, launch_time=T0 + timedelta(minutes=minute)
    )


class TestWhichInstancesAreLost:
    def test_stopped_and_terminated_instances_of_a_running_job_are_lost(self) -> None:
        rec = running(a=0, b=1, c=2)
        found = [inst("a", 0, "stopped"), inst("b", 1, "terminated"), inst("c", 2)]
        assert lost_instances([rec], found) == [
            LostInstance(J, 0, "a", "stopped", "t3.medium"),
            LostInstance(J, 1, "b", "terminated", "t3.medium"),
        ]

    def test_an_instance_ec2_no_longer_lists_is_lost_too(self) -> None:
        assert lost_instances([running(a=0)], []) == [LostInstance(J, 0, "a", MISSING, None)]

    @pytest.mark.parametrize("state", sorted(ALIVE))
    def test_a_live_replacement_not_yet_recorded_covers_its_replica(self, state: str) -> None:
        found = [inst("a", 0, "terminated"), inst("new", 0, state, minute=5)]
        assert lost_instances([running(a=0)], found) == []

    def test_after_a_replacement_only_the_current_instance_counts(self) -> None:
        rec = running(a=0, b=0)
        rec.replaced = ["a"]
        assert lost_instances([rec], [inst("a", 0, "terminated"), inst("b", 0)]) == []
        lost = lost_instances([rec], [inst("a", 0, "terminated"), inst("b", 0, "stopped")])
        assert [x.instance_id for x in lost] == ["b"]

    def test_one_replacement_per_replica_even_if_two_instances_were_reported_for_it(self) -> None:
        rec = running(a=0, b=0)
        lost = lost_instances([rec], [inst("a", 0, "stopped", minute=1), inst("b", 0, "stopped", minute=2)])
        assert [(x.replica, x.instance_id) for x in lost] == [(0, "b")]

    def test_a_replica_a_shrink_removed_and_a_grow_adds_back_is_left_to_the_grow(self) -> None:
        """2 -> 1 terminated b (replica 1); the grow to 2 is recorded but not provisioned yet: b is
        still replica 1's last reported instance, and the grow, not the healer, launches its successor."""
        rec = running(a=0, b=1)
        rec.revision, rec.provisioned_revision, rec.wanted = 3, 2, 2
        assert lost_instances([rec], [inst("a", 0), inst("b", 1, "terminated")]) == []
        rec.provisioned_revision = 3  # the grow ran and reported no new instance for replica 1: lost
        assert [x.instance_id for x in lost_instances([rec], [inst("a", 0), inst("b", 1, "terminated")])] == ["b"]

    @pytest.mark.parametrize(
        "change",
        [
            {"end": "cancelled"},  # a cancel teardown has seen: ending, never healed
            {"end": "succeeded", "released": True},
            {"started_at": None},  # still being provisioned: the launch handles it
            {"cluster": "shared"},
        ],
    )
    def test_jobs_not_running_dedicated_are_never_healed(self, change: dict[str, object]) -> None:
        rec = running(a=0)
        for k, v in change.items():
            setattr(rec, k, v)
        assert not running_dedicated(rec)
        assert lost_instances([rec], [inst("a", 0, "terminated")]) == []

    def test_records_without_replicas_use_the_tags(self) -> None:
        rec = JobLifecycle(job_id=J, cluster="dedicated", started_at=T0, instance_ids=["a", "b"])
        assert [x.instance_id for x in lost_instances([rec], [inst("a", 0), inst("b", 1, "stopped")])] == ["b"]

    def test_other_jobs_instances_do_not_count(self) -> None:
        found = [inst("x", 0, "running", job_id="other"), inst("a", 0, "stopped")]
        assert [x.instance_id for x in lost_instances([running(a=0)], found)] == ["a"]

    @given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["pending", "running", "stopped", "terminated"]))))
    def test_every_uncovered_replica_once_and_no_covered_one(self, spec: list[tuple[int, str]]) -> None:
        rec = running(**{f"i{n}": r for n, (r, _) in enumerate(spec)})
        found = [inst(f"i{n}", r, state, minute=n) for n, (r, state) in enumerate(spec)]
        lost = lost_instances([rec], found)
        covered = {r for r, state in spec if state in ALIVE}
        assert sorted(x.replica for x in lost) == sorted({r for r, _ in spec} - covered)


class TestReplacementLaunch:
    def test_types_start_with_the_lost_instances_then_the_ranked_ones(self) -> None:
        assert replacement_types("m5.large", ["t3.medium", "m5.large"]) == ["m5.large", "t3.medium"]
        assert replacement_types(None, ["t3.medium"]) == ["t3.medium"]

    def test_token_is_stable_per_attempt_and_differs_from_the_launch(self) -> None:
        a = replacement_token(J, 0, "i-1", "t3.medium", 0)
        assert a == replacement_token(J, 0, "i-1", "t3.medium", 0) and len(a) <= 64
        assert (
            len({a, replacement_token(J, 0, "i-1", "t3.medium", 1), replacement_token(J, 0, "i-2", "t3.medium", 0)})
            == 3
        )

    def test_plan_adopts_a_live_replacement_and_counts_dead_ones(self) -> None:
        plan = plan_replacement([inst("r1", 0, "terminated", minute=1), inst("r2", 0, "pending", minute=2)])
        assert plan.keep is not None and plan.keep.instance_id == "r2" and plan.extra == [] and plan.attempts == 2
        plan = plan_replacement([inst("r1", 0, "stopped")])
        assert plan.keep is None and [i.instance_id for i in plan.extra] == ["r1"] and plan.attempts == 1


# --- the healer with fakes ------------------------------------------------------
class SharedClaims:
    """The stream's one-claim-per-instance rule, shared by several healers."""

    def __init__(self) -> None:
        self.stored: dict[str, ev.ClusterInstanceLost] = {}

    async def claim(self, event: ev.ClusterInstanceLost) -> bool:
        if event.instance_id in self.stored:
            return False
        self.stored[event.instance_id] = event
        return True


def healer(ec2: FakeEc2, rec: JobLifecycle | None, claims: SharedClaims | None = None) -> tuple[Healer, FakePublisher]:
    pub = FakePublisher()

    async def ended(_: str) -> bool:
        return False

    async def record(_: str) -> JobLifecycle | None:
        return rec

    ticks = iter(range(10_000))
    p = Provisioner(
        ec2, pub, ended, AwsConf(running_timeout_s=50), max_deliver=5, sleep=no_sleep, clock=lambda: float(next(ticks))
    )
    return Healer(p, ec2, claims or SharedClaims(), record, check_s=1.0), pub


def cluster(ec2: FakeEc2) -> JobLifecycle:
    """A running job of two replicas on i-a and i-b."""
    ec2.add(inst("i-a", 0))
    ec2.add(inst("i-b", 1))
    return running(**{"i-a": 0, "i-b": 1})


class TestHealer:
    async def test_two_healers_seeing_the_same_dead_instance_claim_it_once(self) -> None:
        ec2, claims = FakeEc2(), SharedClaims()
        rec = cluster(ec2)
        ec2.set_state("i-a", "stopped")
        first, _ = healer(ec2, rec, claims)
        second, _ = healer(ec2, rec, claims)
        assert [x.instance_id for x in await first.check_once([rec])] == ["i-a"]
        assert await second.check_once([rec]) == []
        assert list(claims.stored) == ["i-a"]

    async def test_no_running_dedicated_job_costs_no_ec2_call(self) -> None:
        h, _ = healer(FakeEc2(), None)
        assert await h.check_once([]) == []

    async def test_replaces_tags_reports_and_terminates_the_old_instance(self) -> None:
        ec2 = FakeEc2(polls_pending=1)
        rec = cluster(ec2)
        ec2.set_state("i-a", "stopped")
        h, pub = healer(ec2, rec)
        d = FakeDelivery()
        await h.on_lost(lost_event(LostInstance(J, 0, "i-a", "stopped", "t3.medium")), d)
        (done,) = pub.events
        assert isinstance(done, ev.ClusterInstanceReplaced)
        assert (done.replica, done.old_instance_id, done.instance_type) == (0, "i-a", "t3.medium")
        new = ec2.instances[done.new_instance_id]
        assert (new.state, new.job_id, new.replica, new.replaces) == ("running", J, 0, "i-a")
        assert ec2.terminated == ["i-a"] and d.pings >= 1

    async def test_redelivery_adopts_the_replacement_instead_of_launching_again(self) -> None:
        ec2 = FakeEc2()
        rec = cluster(ec2)
        ec2.set_state("i-a", "terminated")
        h, pub = healer(ec2, rec)
        event = lost_event(LostInstance(J, 0, "i-a", "terminated", "t3.medium"))
        await h.on_lost(event, FakeDelivery())
        await h.on_lost(event, FakeDelivery(2))
        assert len(ec2.launch_calls) == 1
        assert {e.event_id for e in pub.events} == {f"{J}:cluster.instance_replaced:i-a"}

    async def test_an_ended_job_gets_no_replacement(self) -> None:
        ec2 = FakeEc2()
        rec = cluster(ec2)
        rec.end = "cancelled"
        h, pub = healer(ec2, rec)
        await h.on_lost(lost_event(LostInstance(J, 0, "i-a", "stopped", "t3.medium")), FakeDelivery())
        assert ec2.launch_calls == [] and pub.events == []

    async def test_capacity_falls_back_along_the_jobs_ranked_types(self) -> None:
        ec2 = FakeEc2(no_capacity=["t3.medium"])
        rec = cluster(ec2)
        h, pub = healer(ec2, rec)
        await h.on_lost(lost_event(LostInstance(J, 1, "i-b", "terminated", "t3.medium")), FakeDelivery())
        assert ec2.launch_calls == [(1, "t3.medium"), (1, "m5.large")]
        (done,) = pub.events
        assert isinstance(done, ev.ClusterInstanceReplaced) and done.instance_type == "m5.large"

    async def test_no_capacity_anywhere_raises_for_a_retry(self) -> None:
        ec2 = FakeEc2(no_capacity=["t3.medium", "m5.large"])
        h, pub = healer(ec2, cluster(ec2))
        with pytest.raises(AwsError, match="InsufficientInstanceCapacity"):
            await h.on_lost(lost_event(LostInstance(J, 0, "i-a", "stopped", "t3.medium")), FakeDelivery())
        assert pub.events == []

    async def test_a_replacement_dying_before_running_is_terminated_and_another_launched(self) -> None:
        ec2 = FakeEc2()
        ec2.die_on_launch = 1
        h, pub = healer(ec2, cluster(ec2))
        event = lost_event(LostInstance(J, 0, "i-a", "stopped", "t3.medium"))
        with pytest.raises(AwsError, match="InstanceTerminated"):
            await h.on_lost(event, FakeDelivery())
        first = list(ec2.instances)[-1]
        assert ec2.terminated == [first]
        await h.on_lost(event, FakeDelivery(2))
        assert len(ec2.launch_calls) == 2 and ec2.tokens[0] != ec2.tokens[1]  # a new client token
        (done,) = pub.events
        assert isinstance(done, ev.ClusterInstanceReplaced) and done.new_instance_id != first
