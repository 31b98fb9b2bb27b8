"""Provisioner: pure launch logic and the handler driven with fakes (no NATS, no AWS)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from schemas import events as ev
from services.cloud.errors import AwsError, ErrorKind, classify
from services.cloud.instances import InstanceInfo, TagScheme
from services.provisioner.domain import Progress, client_token, launch_progress, next_type, plan_launch, ranked_types
from services.provisioner.handlers import Provisioner
from services.runtime.config import AwsConf
from tests.support import events
from tests.support.provisioner import FakeDelivery, FakeEc2, FakePublisher, no_sleep


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("InsufficientInstanceCapacity", 500, ErrorKind.CAPACITY),
        ("InsufficientHostCapacity", None, ErrorKind.CAPACITY),
        ("RequestLimitExceeded", 503, ErrorKind.TRANSIENT),
        ("InternalError", 500, ErrorKind.TRANSIENT),
        ("ConnectionError", None, ErrorKind.TRANSIENT),
        ("SomethingNew", 502, ErrorKind.TRANSIENT),
        ("Unsupported", 400, ErrorKind.PERMANENT),
        ("InstanceLimitExceeded", 400, ErrorKind.PERMANENT),
        ("VcpuLimitExceeded", 400, ErrorKind.PERMANENT),
        ("AuthFailure", 401, ErrorKind.PERMANENT),
        ("UnauthorizedOperation", 403, ErrorKind.PERMANENT),
        ("InvalidAMIID.NotFound", 400, ErrorKind.PERMANENT),
    ],
)
def test_classify(code: str, status: int | None, kind: ErrorKind) -> None:
    assert classify(code, status) is kind


def test_client_token_is_deterministic_short_and_distinct() -> None:
    a = client_token("job-1", 0, "t3.medium")
    assert a == client_token("job-1", 0, "t3.medium")
    assert len(a) <= 64 and a.isascii()
    assert len({a, client_token("job-1", 1, "t3.medium"), client_token("job-1", 0, "m5.large")}) == 3


def test_tags_carry_project_job_and_replica() -> None:
    tags = TagScheme("natsched", "proj").for_replica("j1", 2)
    assert tags["natsched:project"] == "proj"
    assert tags["natsched:job-id"] == "j1"
    assert tags["natsched:replica"] == "2"


def A(replica: int, itype: str = "t3.medium") -> ev.Assignment:
    return ev.Assignment(replica=replica, instance_type=itype)


CANDS = [ev.Candidate(instance_type=t) for t in ("t3.medium", "m5.large", "c5.xlarge")]


def test_ranked_types_assigned_first_then_candidates_without_duplicates() -> None:
    assert ranked_types([A(0, "m5.large"), A(1, "m5.large")], CANDS) == ["m5.large", "t3.medium", "c5.xlarge"]


@pytest.mark.parametrize(
    ("preferred", "exhausted", "expected"),
    [
        ("t3.medium", [], "t3.medium"),
        ("t3.medium", ["t3.medium"], "m5.large"),
        ("t3.medium", ["t3.medium", "m5.large"], "c5.xlarge"),
        ("t3.medium", ["t3.medium", "m5.large", "c5.xlarge"], None),
        (None, [], "t3.medium"),
    ],
)
def test_next_type_falls_back_in_rank_order(preferred: str | None, exhausted: list[str], expected: str | None) -> None:
    assert next_type(["t3.medium", "m5.large", "c5.xlarge"], preferred, exhausted) == expected


def inst(iid: str, replica: int | None, state: str = "running", second: int = 0) -> InstanceInfo:
    return InstanceInfo(
        instance_id=iid,
        instance_type="t3.medium",
        state=state,
        private_ip="10.0.0.1",
        job_id="j",
        replica=replica,
        launch_time=datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC),
    )


class TestPlanLaunch:
    def test_nothing_exists_everything_missing(self) -> None:
        p = plan_launch([A(0), A(1)], [])
        assert [a.replica for a in p.missing] == [0, 1] and not p.keep and not p.extra

    def test_existing_replica_is_kept_not_relaunched(self) -> None:
        p = plan_launch([A(0), A(1)], [inst("i-a", 1)])
        assert [a.replica for a in p.missing] == [0]
        assert p.keep[1].instance_id == "i-a"

    def test_duplicate_replica_oldest_kept_newer_is_surplus(self) -> None:
        p = plan_launch([A(0)], [inst("i-new", 0, second=5), inst("i-old", 0, second=1), inst("i-x", 7)])
        assert p.keep[0].instance_id == "i-old"
        assert sorted(i.instance_id for i in p.extra) == ["i-new", "i-x"]
        assert p.missing == []

    def test_dead_instances_do_not_count(self) -> None:
        p = plan_launch([A(0)], [inst("i-dead", 0, state="terminated")])
        assert [a.replica for a in p.missing] == [0] and not p.extra


@pytest.mark.parametrize(
    ("states", "expected", "progress"),
    [
        (["running", "running"], 2, Progress.RUNNING),
        (["running", "pending"], 2, Progress.WAITING),
        (["running"], 2, Progress.WAITING),
        (["running", "terminated"], 2, Progress.LOST),
        (["stopped"], 1, Progress.LOST),
    ],
)
def test_launch_progress(states: list[str], expected: int, progress: Progress) -> None:
    assert launch_progress([inst(f"i-{n}", n, s) for n, s in enumerate(states)], expected) is progress


# --- the handler with fakes ---------------------------------------------------
def decided(cluster: str = "dedicated", replicas: int = 2) -> ev.PlacementDecided:
    return events.decided("j", cluster=cluster, assignments=[A(r) for r in range(replicas)], candidates=CANDS)


def make(
    ec2: FakeEc2, *, ended: bool = False, timeout: float = 300.0, sleep: Callable[[float], Awaitable[None]] = no_sleep
) -> tuple[Provisioner, FakePublisher]:
    pub = FakePublisher()

    async def job_ended(_: str) -> bool:
        return ended

    ticks = iter(range(10_000))
    p = Provisioner(
        ec2,
        pub,
        job_ended,
        AwsConf(running_timeout_s=timeout),
        max_deliver=5,
        sleep=sleep,
        clock=lambda: float(next(ticks)),
    )
    return p, pub


class TestProvisionerHandler:
    async def test_launches_each_replica_then_reports_running_cluster(self) -> None:
        ec2 = FakeEc2(polls_pending=2)
        p, pub = make(ec2)
        d = FakeDelivery()
        await p.on_decided(decided(), d)
        assert pub.types() == ["cluster.provisioning", "cluster.provisioned"]
        done = pub.events[-1]
        assert isinstance(done, ev.ClusterProvisioned)
        assert [(i.replica, i.state, i.instance_type) for i in done.instances] == [
            (0, "running", "t3.medium"),
            (1, "running", "t3.medium"),
        ]
        assert all(i.private_ip for i in done.instances)
        assert d.pings >= 2  # kept the message ours while waiting

    async def test_shared_jobs_are_not_ours(self) -> None:
        ec2 = FakeEc2()
        p, pub = make(ec2)
        await p.on_decided(decided(cluster="shared"), FakeDelivery())
        assert pub.events == [] and ec2.launch_calls == []

    async def test_job_that_already_ended_is_not_launched(self) -> None:
        ec2 = FakeEc2()
        p, pub = make(ec2, ended=True)
        await p.on_decided(decided(), FakeDelivery())
        assert pub.events == [] and ec2.launch_calls == []

    async def test_redelivery_relaunches_nothing(self) -> None:
        ec2 = FakeEc2()
        p, _ = make(ec2)
        await p.on_decided(decided(), FakeDelivery())
        await p.on_decided(decided(), FakeDelivery(2))
        assert len(ec2.instances) == 2 and len(ec2.launch_calls) == 2

    async def test_capacity_falls_back_to_next_ranked_type(self) -> None:
        ec2 = FakeEc2(no_capacity=["t3.medium"])
        p, pub = make(ec2)
        await p.on_decided(decided(), FakeDelivery())
        done = pub.events[-1]
        assert isinstance(done, ev.ClusterProvisioned)
        assert {i.instance_type for i in done.instances} == {"m5.large"}
        assert ec2.launch_calls[:2] == [(0, "t3.medium"), (0, "m5.large")]

    async def test_no_capacity_anywhere_fails_permanently(self) -> None:
        ec2 = FakeEc2(no_capacity=["t3.medium", "m5.large", "c5.xlarge"])
        p, pub = make(ec2)
        await p.on_decided(decided(), FakeDelivery())
        failed = pub.events[-1]
        assert isinstance(failed, ev.ClusterProvisionFailed)
        assert failed.error_code == "InsufficientInstanceCapacity"

    async def test_permanent_error_is_reported_with_the_aws_code(self) -> None:
        ec2 = FakeEc2(unsupported=["t3.medium"])
        p, pub = make(ec2)
        await p.on_decided(decided(), FakeDelivery())
        assert pub.types() == ["cluster.provision_failed"]
        failed = pub.events[0]
        assert isinstance(failed, ev.ClusterProvisionFailed) and failed.error_code == "Unsupported"

    async def test_transient_error_raises_for_a_retry_until_the_last_delivery(self) -> None:
        ec2 = FakeEc2()
        ec2.transient_failures = 1
        p, pub = make(ec2)
        with pytest.raises(AwsError, match="RequestLimitExceeded"):
            await p.on_decided(decided(), FakeDelivery(1))
        assert pub.events == []
        ec2.transient_failures = 1
        await p.on_decided(decided(), FakeDelivery(5))
        failed = pub.events[-1]
        assert isinstance(failed, ev.ClusterProvisionFailed) and failed.error_code == "RequestLimitExceeded"

    async def test_instances_never_running_time_out(self) -> None:
        ec2 = FakeEc2(polls_pending=10_000)
        p, pub = make(ec2, timeout=5)
        await p.on_decided(decided(), FakeDelivery())
        assert pub.types() == ["cluster.provisioning", "cluster.provision_failed"]
        failed = pub.events[-1]
        assert isinstance(failed, ev.ClusterProvisionFailed) and failed.error_code == "RunningTimeout"

    async def test_polls_back_off_from_a_fifth_of_a_second_by_1_6_up_to_5_s(self) -> None:
        ec2 = FakeEc2(polls_pending=12)
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        p, pub = make(ec2, sleep=sleep)
        await p.on_decided(decided(), FakeDelivery())
        assert pub.types() == ["cluster.provisioning", "cluster.provisioned"]
        assert slept == pytest.approx([min(5.0, 0.2 * 1.6**n) for n in range(12)])
