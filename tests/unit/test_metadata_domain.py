"""The metadata projection's pure logic: event sequences (in order, reordered, duplicated) -> job view."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import events as ev
from schemas.jobs import JobSpec, Resources
from services.metadata import cursors, domain, migrations, nodes
from tests.support.events import SPEC

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
DEDICATED = msgspec.structs.replace(SPEC, cluster="dedicated")


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def submitted(job: str = "j1", at: float = 0, spec: JobSpec = SPEC) -> ev.JobSubmitted:
    return ev.JobSubmitted(event_id=f"{job}:job.submitted", job_id=job, at=t(at), spec=spec)


def accepted(job: str = "j1", at: float = 1, spec: JobSpec = SPEC) -> ev.JobAccepted:
    return ev.JobAccepted(event_id=f"{job}:job.accepted", job_id=job, at=t(at), spec=spec, submitted_at=t(0))


def decided(job: str = "j1", at: float = 2, resources: Resources | None = SPEC.resources) -> ev.PlacementDecided:
    return ev.PlacementDecided(
        event_id=f"{job}:placement.decided",
        job_id=job,
        at=t(at),
        cluster="shared",
        technology="docker",
        strategy="best_fit",
        assignments=[ev.Assignment(replica=0, node_id="n1"), ev.Assignment(replica=1, node_id="n2")],
        candidates=[ev.Candidate(node_id="n1", cpu_free=8, memory_free_mb=4096)],
        resources=resources,
    )


def cancel(job: str = "j1", at: float = 3) -> ev.JobCancelRequested:
    return ev.JobCancelRequested(event_id=f"{job}:job.cancel_requested", job_id=job, at=t(at), reason="user asked")


def released(job: str = "j1", at: float = 4) -> ev.PlacementReleased:
    return ev.PlacementReleased(event_id=f"{job}:placement.released", job_id=job, at=t(at))


def completed(job: str = "j1", at: float = 5, outcome: str = "succeeded") -> ev.JobCompleted:
    return ev.JobCompleted(event_id=f"{job}:job.completed", job_id=job, at=t(at), outcome=outcome, message="bye")  # type: ignore[arg-type]


def provisioning(job: str = "j1", at: float = 3) -> ev.ClusterProvisioning:
    return ev.ClusterProvisioning(
        event_id=f"{job}:cluster.provisioning",
        job_id=job,
        at=t(at),
        instances=[ev.Instance(instance_id="i-1", instance_type="t3.medium", replica=0)],
    )


def provisioned(job: str = "j1", at: float = 4) -> ev.ClusterProvisioned:
    return ev.ClusterProvisioned(
        event_id=f"{job}:cluster.provisioned",
        job_id=job,
        at=t(at),
        instances=[
            ev.Instance(instance_id="i-1", instance_type="t3.medium", replica=0, state="running", private_ip="10.0.0.1")
        ],
    )


def torn_down(job: str = "j1", at: float = 6, ids: tuple[str, ...] = ("i-1",)) -> ev.ClusterTornDown:
    return ev.ClusterTornDown(event_id=f"{job}:cluster.torn_down", job_id=job, at=t(at), instance_ids=list(ids))


def fold(events: list[ev.JobEvent]) -> domain.JobView:
    view: domain.JobView | None = None
    for e in events:
        view = domain.apply(view, e)
    assert view is not None
    return view


def record(events: list[ev.JobEvent]) -> dict[str, object]:
    rec = domain.to_record(fold(events))
    assert rec is not None
    out: dict[str, object] = msgspec.to_builtins(rec)
    return out


def states(rec: dict[str, object]) -> list[str]:
    history = rec["history"]
    assert isinstance(history, list)
    return [h["state"] for h in history]


class TestLifecycle:
    def test_shared_job_in_order(self) -> None:
        rec = record([submitted(), accepted(), decided()])
        assert rec["state"] == "placed" and rec["reason"] is None
        assert states(rec) == ["submitted", "accepted", "placed"]
        assert rec["submitted_at"] == t(0).isoformat().replace("+00:00", "Z")
        assert rec["updated_at"] == t(2).isoformat().replace("+00:00", "Z")
        placement = rec["placement"]
        assert isinstance(placement, dict)
        assert [a["node_id"] for a in placement["assignments"]] == ["n1", "n2"]
        assert rec["spec"] == msgspec.to_builtins(SPEC)

    def test_decided_before_accepted_and_submitted_yields_the_same_record(self) -> None:
        assert record([decided(), accepted(), submitted()]) == record([submitted(), accepted(), decided()])

    def test_a_redelivered_event_changes_nothing(self) -> None:
        once = fold([submitted(), accepted(), decided()])
        twice = fold([submitted(), accepted(), accepted(), decided(), submitted(), decided()])
        assert msgspec.json.encode(once) == msgspec.json.encode(twice)

    def test_rejected_says_why(self) -> None:
        rejected = ev.JobRejected(event_id="j1:job.rejected", job_id="j1", at=t(1), reason="unknown technology")
        rec = record([rejected, submitted()])
        assert (rec["state"], rec["reason"]) == ("rejected", "unknown technology")
        assert states(rec) == ["submitted", "rejected"]

    def test_placement_failed_is_terminal_with_the_explanation(self) -> None:
        failed = ev.PlacementFailed(event_id="j1:placement.failed", job_id="j1", at=t(30), reason="0/3 nodes available")
        rec = record([submitted(), failed, accepted()])
        assert (rec["state"], rec["reason"]) == ("failed", "0/3 nodes available")

    def test_cancel_then_release_is_cancelled_in_either_order(self) -> None:
        a = record([submitted(), accepted(), decided(), cancel(), released()])
        b = record([released(), decided(), cancel(), accepted(), submitted()])
        assert a == b
        assert (a["state"], a["reason"]) == ("cancelled", "user asked")
        assert states(a) == ["submitted", "accepted", "placed", "cancelling", "cancelled"]

    def test_cancel_requested_alone_is_cancelling(self) -> None:
        rec = record([submitted(), accepted(), decided(), cancel()])
        assert (rec["state"], rec["reason"]) == ("cancelling", "user asked")

    def test_first_terminal_state_wins(self) -> None:
        # completed at 5, then cancel requested at 6 and released at 7: the job had succeeded
        rec = record([released(at=7), cancel(at=6), completed(at=5), decided(), accepted(), submitted()])
        assert rec["state"] == "succeeded"
        assert states(rec) == ["submitted", "accepted", "placed", "succeeded"]

    def test_completed_failed_carries_the_message(self) -> None:
        rec = record([submitted(), accepted(), decided(), completed(outcome="failed")])
        assert (rec["state"], rec["reason"]) == ("failed", "bye")

    def test_expired(self) -> None:
        expired = ev.JobExpired(event_id="j1:job.expired", job_id="j1", at=t(60), max_runtime_s=60)
        rec = record([submitted(), accepted(), decided(), expired])
        assert rec["state"] == "expired" and "60" in str(rec["reason"])

    def test_state_of_highest_rank_wins_over_arrival_order(self) -> None:
        rec = record([decided(at=2), accepted(at=1)])
        assert rec["state"] == "placed" and rec["spec"] == msgspec.to_builtins(SPEC)
        assert rec["submitted_at"] is not None  # from job.accepted's submitted_at

    def test_no_state_bearing_event_yet_means_no_record(self) -> None:
        assert domain.to_record(fold([released()])) is None


class TestDedicated:
    def test_provisioned_instances_run_then_terminate(self) -> None:
        evs: list[ev.JobEvent] = [
            submitted(spec=DEDICATED),
            accepted(spec=DEDICATED),
            decided(),
            provisioning(),
            provisioned(),
        ]
        rec = record(evs)
        assert rec["state"] == "running"
        assert rec["instances"] == [
            {
                "instance_id": "i-1",
                "instance_type": "t3.medium",
                "replica": 0,
                "state": "running",
                "private_ip": "10.0.0.1",
            }
        ]
        done = record([*evs, completed(), torn_down(), released()])
        assert done["state"] == "succeeded"
        instances = done["instances"]
        assert isinstance(instances, list) and instances[0]["state"] == "terminated"

    def test_provisioning_after_provisioned_does_not_downgrade(self) -> None:
        rec = record([provisioned(), provisioning(), decided()])
        assert rec["state"] == "running"
        instances = rec["instances"]
        assert isinstance(instances, list)
        assert instances[0]["private_ip"] == "10.0.0.1" and instances[0]["state"] == "running"

    def test_torn_down_before_provisioned_still_terminates(self) -> None:
        rec = record([torn_down(at=9), provisioned(), cancel(at=8)])
        assert rec["state"] == "cancelled"
        instances = rec["instances"]
        assert isinstance(instances, list) and instances[0]["state"] == "terminated"

    def test_provision_failed(self) -> None:
        failed = ev.ClusterProvisionFailed(
            event_id="j1:cluster.provision_failed", job_id="j1", at=t(5), error_code="Unsupported", message="no"
        )
        rec = record([submitted(), accepted(), decided(), provisioning(), failed])
        assert rec["state"] == "failed" and "Unsupported" in str(rec["reason"])


LIFECYCLES: list[list[ev.JobEvent]] = [
    [submitted(), accepted(), decided(), cancel(), released()],
    [submitted(), accepted(), decided(), provisioning(), provisioned(), completed(), torn_down(), released()],
    [
        submitted(),
        ev.JobRejected(event_id="j1:job.rejected", job_id="j1", at=t(1), reason="no"),
    ],
    [submitted(), accepted(), ev.PlacementFailed(event_id="j1:placement.failed", job_id="j1", at=t(9), reason="x")],
]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), lifecycle=st.sampled_from(LIFECYCLES))
def test_any_order_with_any_duplicates_yields_the_same_view(data: st.DataObject, lifecycle: list[ev.JobEvent]) -> None:
    extra = data.draw(st.lists(st.sampled_from(lifecycle), max_size=6))
    shuffled = data.draw(st.permutations([*lifecycle, *extra]))
    expected = fold(lifecycle)
    got = fold(shuffled)
    assert msgspec.json.encode(got) == msgspec.json.encode(expected)
    assert domain.derive(got) == domain.derive(expected)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), lifecycle=st.sampled_from(LIFECYCLES))
def test_merging_in_chunks_equals_folding_and_leaves_the_input_alone(
    data: st.DataObject, lifecycle: list[ev.JobEvent]
) -> None:
    """The projection merges each batch's events of a job at once into a cached view (``merge``):
    the same view as applying them one by one, whatever the batch boundaries, and the cached view
    it started from is not changed (it stays the cache's until the batch commits)."""
    extra = data.draw(st.lists(st.sampled_from(lifecycle), max_size=4))
    events = data.draw(st.permutations([*lifecycle, *extra]))
    cuts = sorted(data.draw(st.lists(st.integers(1, len(events) - 1), max_size=3, unique=True)))
    view: domain.JobView | None = None
    for lo, hi in zip([0, *cuts], [*cuts, len(events)], strict=True):
        before = msgspec.json.encode(view)
        merged = domain.merge(view, events[lo:hi])
        assert msgspec.json.encode(view) == before
        view = merged
    assert view is not None
    assert msgspec.json.encode(view) == msgspec.json.encode(fold(events))
    derived = domain.derive(view)
    assert domain.state_of(view) == (derived.state, derived.reason)


class TestReservations:
    def test_from_the_decision_resources(self) -> None:
        view = fold([decided(resources=Resources(cpu=2, memory_mb=100))])
        assert domain.reservations(view) == [
            (0, "n1", Resources(cpu=2, memory_mb=100)),
            (1, "n2", Resources(cpu=2, memory_mb=100)),
        ]

    def test_fall_back_to_the_spec(self) -> None:
        assert domain.reservations(fold([decided(resources=None)]))[0][2] is None
        assert domain.reservations(fold([decided(resources=None), submitted()]))[0][2] == SPEC.resources

    def test_released_follows_placement_released(self) -> None:
        assert not fold([decided()]).released
        assert fold([released(), decided()]).released


class TestNodes:
    def test_event_key_uses_event_id_else_node_and_time(self) -> None:
        base = dict(node_id="n1", state="active", cpu_cores=8, cpu_free=8, memory_mb=1024, memory_free_mb=1024)
        a = ev.NodeStatus(at=t(0), **base)  # type: ignore[arg-type]
        b = ev.NodeStatus(at=t(0), **base)  # type: ignore[arg-type]
        c = ev.NodeStatus(at=t(3), **base)  # type: ignore[arg-type]
        assert nodes.node_event_key(a) == nodes.node_event_key(b) != nodes.node_event_key(c)
        assert nodes.node_event_key(ev.NodeStatus(event_id="x", at=t(0), **base)) == "x"  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("state", "age", "active"), [("active", 1, True), ("active", 20, False), ("draining", 1, False)]
    )
    def test_active_means_active_and_fresh(self, state: str, age: float, active: bool) -> None:
        assert nodes.node_active(state, t(0), t(age), ttl_s=15) is active


class TestCursor:
    @pytest.mark.parametrize("seq", [1, 42, 2**62])
    def test_round_trip(self, seq: int) -> None:
        assert cursors.decode_cursor(cursors.encode_cursor(seq)) == seq

    @pytest.mark.parametrize("bad", ["", "x", "!!!", "bm9wZQ", cursors.encode_cursor(5)[:-2] + "zz", "ajE6LTE"])
    def test_garbage_is_rejected(self, bad: str) -> None:
        with pytest.raises(cursors.BadCursor, match="not a cursor"):
            cursors.decode_cursor(bad)


class TestMigrationFiles:
    def test_packaged_migrations_are_numbered_from_one(self) -> None:
        found = migrations.load()
        assert [m.version for m in found] == list(range(1, len(found) + 1))
        assert "CREATE TABLE events" in found[0].sql

    def test_order_and_bad_names(self, tmp_path: Path) -> None:
        (tmp_path / "0002_b.sql").write_text("B")
        (tmp_path / "0001_a.sql").write_text("A")
        assert [(m.version, m.sql) for m in migrations.load(tmp_path)] == [(1, "A"), (2, "B")]
        (tmp_path / "3_c.sql").write_text("C")
        with pytest.raises(ValueError, match="NNNN_name"):
            migrations.load(tmp_path)

    def test_duplicate_versions_are_refused(self, tmp_path: Path) -> None:
        (tmp_path / "0001_a.sql").write_text("A")
        (tmp_path / "0001_b.sql").write_text("B")
        with pytest.raises(ValueError, match="two migrations"):
            migrations.load(tmp_path)
