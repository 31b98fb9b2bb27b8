"""The metadata projection's revisions (§8.1-8.2), pure: placement.decided revisions in any order,
placement.degraded and the degraded overlay, cluster.instance_replaced."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import events as ev
from schemas.replies import JobRecord
from services.metadata import domain
from tests.support.events import SPEC, spec_revision

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
J = "j1"


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def base() -> list[ev.JobEvent]:
    return [
        ev.JobSubmitted(event_id=f"{J}:job.submitted", job_id=J, at=t(0), spec=SPEC),
        ev.JobAccepted(event_id=f"{J}:job.accepted", job_id=J, at=t(1), spec=SPEC, submitted_at=t(0)),
    ]


def decided(revision: int, nodes: dict[int, str], changes: list[ev.Change] | None = None) -> ev.PlacementDecided:
    return spec_revision(J, revision, nodes, at=t(1 + revision), changes=changes)


def degraded(revision: int, missing: list[int], reason: str = "0/3 nodes available") -> ev.PlacementDegraded:
    return ev.PlacementDegraded(
        event_id=ev.revision_event_id(J, "placement.degraded", revision),
        job_id=J,
        at=t(1.5 + revision),
        revision=revision,
        missing=missing,
        reason=reason,
    )


LOST = ev.Change(replica=1, from_="n2", to=None, reason="node_lost")
BACK = ev.Change(replica=1, from_=None, to="n3", reason="node_lost")
R1 = decided(1, {0: "n1", 1: "n2"})
R2 = decided(2, {0: "n1"}, [LOST])
D2 = degraded(2, [1])
R3 = decided(3, {0: "n1", 1: "n3"}, [BACK])


def record(events: list[ev.JobEvent]) -> JobRecord:
    view = domain.merge(None, events)
    rec = domain.to_record(view)
    assert rec is not None
    return rec


def wire(rec: JobRecord) -> Any:
    return msgspec.to_builtins(rec)


class TestRevisions:
    def test_a_later_revision_replaces_the_assignments_and_history_lists_every_one(self) -> None:
        rec = record([*base(), R1, R2, D2, R3])
        assert rec.placement is not None
        assert rec.placement.revision == 3
        assert [(a.replica, a.node_id) for a in rec.placement.assignments] == [(0, "n1"), (1, "n3")]
        assert [r.revision for r in rec.placement.revisions] == [1, 2, 3]
        assert rec.placement.revisions[1].changes == [LOST]
        assert rec.placement.missing == [] and rec.state == "placed"

    def test_revision_2_before_revision_1_ends_with_revision_2(self) -> None:
        rec = record([*base(), R2, R1])
        assert rec.placement is not None and rec.placement.revision == 2
        assert [a.node_id for a in rec.placement.assignments] == ["n1"]
        assert wire(rec) == wire(record([*base(), R1, R2]))

    def test_reservations_follow_the_latest_revision(self) -> None:
        assert [(r, n) for r, n, _ in domain.reservations(domain.merge(None, [R2, R1]))] == [(0, "n1")]
        assert [(r, n) for r, n, _ in domain.reservations(domain.merge(None, [R3, R1, R2]))] == [(0, "n1"), (1, "n3")]

    def test_old_events_without_revision_are_revision_1(self) -> None:
        old = msgspec.json.decode(
            msgspec.json.encode(
                {k: v for k, v in msgspec.to_builtins(R1).items() if k not in ("revision", "replicas")}
            ),
            type=ev.PlacementDecided,
        )
        rec = record([*base(), old])
        assert rec.placement is not None and rec.placement.revision == 1 and rec.placement.replicas is None


class TestDegraded:
    def test_degraded_while_its_revision_is_the_latest(self) -> None:
        rec = record([*base(), R1, R2, D2])
        assert (rec.state, rec.reason) == ("degraded", "0/3 nodes available")
        assert rec.placement is not None and rec.placement.missing == [1]
        assert rec.placement.degraded_reason == "0/3 nodes available"
        assert [h.state for h in rec.history][-1] == "degraded"

    def test_a_later_revision_ends_it_whatever_the_arrival_order(self) -> None:
        for order in ([R1, R2, D2, R3], [R3, D2, R2, R1], [D2, R3, R1, R2]):
            rec = record([*base(), *order])
            assert rec.state == "placed", order
            assert rec.placement is not None and rec.placement.missing == []

    def test_degraded_before_its_decision_is_degraded(self) -> None:
        assert record([*base(), R1, D2]).state == "degraded"

    def test_a_terminal_state_is_not_overlaid(self) -> None:
        released = ev.PlacementReleased(event_id=f"{J}:placement.released", job_id=J, at=t(9), reason="cancelled")
        cancel = ev.JobCancelRequested(event_id=f"{J}:job.cancel_requested", job_id=J, at=t(8))
        assert record([*base(), R1, R2, D2, cancel]).state == "cancelling"
        assert record([*base(), R1, R2, D2, cancel, released]).state == "cancelled"

    def test_state_of_agrees_with_derive(self) -> None:
        view = domain.merge(None, [*base(), R1, R2, D2])
        d = domain.derive(view)
        assert domain.state_of(view) == (d.state, d.reason) == ("degraded", "0/3 nodes available")


class TestInstanceReplaced:
    def test_the_old_instance_is_replaced_and_the_new_one_runs(self) -> None:
        provisioned = ev.ClusterProvisioned(
            event_id=f"{J}:cluster.provisioned",
            job_id=J,
            at=t(3),
            instances=[ev.Instance(instance_id="i-1", instance_type="t3.small", replica=0, state="running")],
        )
        replaced = ev.ClusterInstanceReplaced(
            event_id=f"{J}:cluster.instance_replaced:i-1",
            job_id=J,
            at=t(9),
            replica=0,
            old_instance_id="i-1",
            new_instance_id="i-2",
            instance_type="t3.small",
            private_ip="10.0.0.2",
        )
        lost = ev.ClusterInstanceLost(
            event_id=f"{J}:cluster.instance_lost:i-1", job_id=J, at=t(8), replica=0, instance_id="i-1", state="stopped"
        )
        assert [(i.instance_id, i.state) for i in record([*base(), lost, provisioned]).instances] == [
            ("i-1", "stopped")
        ]
        for order in ([provisioned, lost, replaced], [replaced, provisioned, lost], [lost, replaced, provisioned]):
            rec = record([*base(), *order])
            assert [(i.instance_id, i.replica, i.state) for i in rec.instances] == [
                ("i-1", 0, "replaced"),
                ("i-2", 0, "running"),
            ]


EVENTS: list[ev.JobEvent] = [*base(), R1, R2, D2, R3]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_order_and_duplicates_of_revisions_give_the_same_record(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=2, max_value=len(EVENTS)))
    events = EVENTS[:n]
    shuffled = data.draw(st.permutations(events))
    extra = data.draw(st.lists(st.sampled_from(events), max_size=4))
    assert msgspec.json.encode(domain.merge(None, [*shuffled, *extra])) == msgspec.json.encode(
        domain.merge(None, events)
    )
