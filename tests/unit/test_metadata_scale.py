"""The job record of a resized dedicated job (§8.3): desired and placed replicas, and each
instance's state after growth and shrink, whatever order the events arrive in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from schemas import events as ev
from services.metadata import domain
from tests.support.events import SPEC

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def decided(revision: int, replicas: int) -> ev.PlacementDecided:
    return ev.PlacementDecided(
        event_id=ev.revision_event_id("j", "placement.decided", revision),
        job_id="j",
        at=T0 + timedelta(seconds=revision),
        cluster="dedicated",
        technology="docker",
        strategy="best_fit",
        assignments=[ev.Assignment(replica=r, instance_type="t3.medium") for r in range(replicas)],
        candidates=[],
        revision=revision,
        replicas=replicas,
        changes=[] if revision == 1 else [ev.Change(replica=replicas - 1, reason="scale")],
    )


def provisioned(revision: int | None, ids: dict[int, str]) -> ev.ClusterProvisioned:
    return ev.ClusterProvisioned(
        event_id=f"j:cluster.provisioned:{revision}",
        job_id="j",
        at=T0 + timedelta(seconds=10 + (revision or 1)),
        instances=[
            ev.Instance(instance_id=i, instance_type="t3.medium", replica=r, state="running") for r, i in ids.items()
        ],
        revision=revision,
    )


HISTORY: list[ev.JobEvent] = [
    ev.JobAccepted(event_id="j:acc", job_id="j", at=T0, spec=SPEC, submitted_at=T0),
    decided(1, 2),
    provisioned(None, {0: "i-a", 1: "i-b"}),
    ev.JobScaleRequested(event_id="j:s1", job_id="j", at=T0, replicas=4),
    decided(2, 4),
    provisioned(2, {0: "i-a", 1: "i-b", 2: "i-c", 3: "i-d"}),
    ev.JobScaleRequested(event_id="j:s2", job_id="j", at=T0, replicas=1),
    decided(3, 1),
    provisioned(3, {0: "i-a"}),
]


@given(st.permutations(HISTORY))
def test_after_2_4_1_one_instance_runs_and_the_removed_ones_are_terminated(order: list[ev.JobEvent]) -> None:
    rec = domain.to_record(domain.merge(None, order))
    assert rec is not None and rec.placement is not None
    assert (rec.placement.revision, rec.placement.replicas, len(rec.placement.assignments)) == (3, 1, 1)
    assert rec.placement.missing == []
    assert [(i.replica, i.instance_id, i.state) for i in rec.instances] == [
        (0, "i-a", "running"),
        (1, "i-b", "terminated"),
        (2, "i-c", "terminated"),
        (3, "i-d", "terminated"),
    ]
    assert rec.state == "running"


def test_while_grown_every_replica_runs() -> None:
    rec = domain.to_record(domain.merge(None, HISTORY[:6]))
    assert rec is not None and rec.placement is not None and rec.placement.replicas == 4
    assert [(i.replica, i.state) for i in rec.instances] == [(r, "running") for r in range(4)]
