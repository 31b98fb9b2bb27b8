"""The invariant checker finds each kind of violation, and passes a clean history."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Constraints, Defaults, JobSpec, Resources, decode_job_request, normalise
from tests.support.invariants import NodeView, Settled, check
from tests.support.settling import Tagged

SPEC: JobSpec = normalise(decode_job_request(b'{"name": "x"}'), Defaults())
CAPS = {"n1": (4.0, 4096, 0), "n2": (4.0, 4096, 0), "n3": (4.0, 4096, 0)}
R = Resources(cpu=2.0, memory_mb=1024)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def submitted(j: str, key: str | None = None) -> ev.JobSubmitted:
    return ev.JobSubmitted(event_id=f"{j}:s", job_id=j, spec=SPEC, idempotency_key=key)


def decided(
    j: str,
    node: str | None = "n1",
    *,
    revision: int = 1,
    nodes: dict[int, str] | None = None,
    changes: list[ev.Change] | None = None,
    replicas: int | None = None,
    spread: bool = False,
    priority: int = 0,
    preempted: list[ev.Preempted] | None = None,
) -> ev.PlacementDecided:
    placed = nodes if nodes is not None else ({0: node} if node else {})
    return ev.PlacementDecided(
        event_id=ev.revision_event_id(j, s.PLACEMENT_DECIDED, revision),
        job_id=j,
        cluster="shared",
        technology="docker",
        strategy="best_fit",
        assignments=[ev.Assignment(replica=r, node_id=n) for r, n in sorted(placed.items())],
        candidates=[],
        resources=R,
        revision=revision,
        changes=changes or [],
        replicas=replicas,
        constraints=Constraints(spread=spread),
        priority=priority,
        preempted=preempted or [],
    )


def move(replica: int, src: str | None, dst: str | None, reason: str = "node_lost", by: str | None = None) -> ev.Change:
    return ev.Change(replica=replica, from_=src, to=dst, reason=reason, by=by)  # type: ignore[arg-type]


def degraded(j: str, revision: int, missing: list[int], reason: str = "0/3 nodes available") -> ev.PlacementDegraded:
    return ev.PlacementDegraded(
        event_id=ev.revision_event_id(j, s.PLACEMENT_DEGRADED, revision),
        job_id=j,
        revision=revision,
        missing=missing,
        reason=reason,
    )


def released(j: str) -> ev.PlacementReleased:
    return ev.PlacementReleased(event_id=f"{j}:r", job_id=j)


def cancelled(j: str) -> ev.JobCancelRequested:
    return ev.JobCancelRequested(event_id=f"{j}:c", job_id=j)


def scale_requested(j: str, n: int) -> ev.JobScaleRequested:
    return ev.JobScaleRequested(event_id=f"{j}:job.scale_requested:{n}", job_id=j, replicas=n)


def dedicated(j: str, revision: int, types: list[str], changes: list[ev.Change] | None = None) -> ev.PlacementDecided:
    return ev.PlacementDecided(
        event_id=ev.revision_event_id(j, s.PLACEMENT_DECIDED, revision),
        job_id=j,
        cluster="dedicated",
        technology="docker",
        strategy="best_fit",
        assignments=[ev.Assignment(replica=r, instance_type=t) for r, t in enumerate(types)],
        candidates=[],
        revision=revision,
        changes=changes or [],
        replicas=len(types),
    )


def provisioned(j: str, revision: int | None, ids: list[str]) -> ev.ClusterProvisioned:
    inst = [ev.Instance(instance_id=i, instance_type="t3.medium", replica=r) for r, i in enumerate(ids)]
    return ev.ClusterProvisioned(event_id=f"{j}:p:{revision}", job_id=j, instances=inst, revision=revision)


def fleet(*, lost: tuple[str, ...] = (), draining: tuple[str, ...] = ()) -> Settled:
    nodes = {
        n: NodeView(
            cpu=c[0],
            memory_mb=c[1],
            gpus=c[2],
            last_at=NOW - timedelta(seconds=60 if n in lost else 1),
            draining=n in draining,
        )
        for n, c in CAPS.items()
    }
    return Settled(nodes=nodes, now=NOW, node_lost_s=30)


class TestFirstWave:
    def test_clean_history_passes(self) -> None:
        events = [
            submitted("a"),
            decided("a"),
            submitted("b"),
            decided("b"),
            cancelled("a"),
            released("a"),
            submitted("c"),
            decided("c"),
        ]
        r = check(events, CAPS)
        assert r.ok, r
        assert (r.jobs, r.decided) == (3, 3)

    def test_each_violation_is_found(self) -> None:
        r = check([submitted("a"), decided("a"), decided("a")], CAPS)
        assert r.multiply_decided == ["a"]
        r = check([submitted("a")], CAPS, submitted_ids=["a", "zz"])
        assert r.lost == ["a"] and r.missing_from_stream == ["zz"]
        r = check([submitted("a", "k"), submitted("b", "k"), decided("a"), decided("b")], CAPS)
        assert r.duplicate_keys == ["k"]
        r = check([submitted(j) for j in "abc"] + [decided(j) for j in "abc"], CAPS)
        assert r.overbooked == ["n1"]
        r = check([submitted("a"), decided("a"), cancelled("a")], CAPS)
        assert r.unreleased == ["a"]
        r = check([submitted("a"), decided("a"), cancelled("a"), released("a"), released("a")], CAPS)
        assert r.double_released == ["a"]
        launched = ev.ClusterProvisioned(
            event_id="a:p", job_id="a", instances=[ev.Instance(instance_id="i-1", instance_type="t3.medium", replica=0)]
        )
        r = check([submitted("a"), launched, cancelled("a")], CAPS)
        assert r.instances_left == ["a:i-1"]
        assert not r.ok


class TestRevisions:
    def test_a_move_releases_the_old_node_and_books_the_new_one(self) -> None:
        # a on n1, b on n1 (full); a moves to n2, c takes n1's room: never over capacity
        events = [
            decided("a"),
            decided("b"),
            decided("a", revision=2, nodes={0: "n2"}, changes=[move(0, "n1", "n2", "drain")]),
            decided("c"),
        ]
        r = check(events, CAPS)
        assert r.ok, r.violations
        assert (r.decided, r.revisions) == (3, 1)

    def test_a_move_onto_a_full_node_is_overbooking(self) -> None:
        events = [decided("a"), decided("b", "n2"), decided("c", "n2")]
        events.append(decided("a", revision=2, nodes={0: "n2"}, changes=[move(0, "n1", "n2")]))
        assert check(events, CAPS).overbooked == ["n2"]

    def test_the_release_frees_the_latest_revision(self) -> None:
        events = [
            decided("a"),
            decided("a", revision=2, nodes={0: "n2"}, changes=[move(0, "n1", "n2")]),
            cancelled("a"),
            released("a"),
            decided("b", "n2"),
            decided("c", "n2"),
        ]
        assert check(events, CAPS).ok

    def test_gaps_duplicates_and_stale_revisions(self) -> None:
        two = decided("a", revision=2, nodes={0: "n2"}, changes=[move(0, "n1", "n2")])
        r = check([decided("a"), two, two], CAPS)
        assert r.bad_revisions == ["a: revision 2 after 2"]
        r = check([decided("a"), decided("a", revision=3, nodes={0: "n2"}, changes=[move(0, "n1", "n2")])], CAPS)
        assert r.bad_revisions == ["a: revision 3 after 1"]
        r = check([decided("a", revision=2, nodes={0: "n2"}, changes=[move(0, None, "n2")])], CAPS)
        assert r.bad_revisions == ["a: revision 2 after 0"]

    def test_a_revision_after_the_release_is_a_leak(self) -> None:
        events = [decided("a"), cancelled("a"), released("a")]
        events.append(decided("a", revision=2, nodes={0: "n2"}, changes=[move(0, "n1", "n2")]))
        assert check(events, CAPS).revised_after_release == ["a: revision 2"]

    def test_changes_must_match_the_moves(self) -> None:
        base = decided("a", nodes={0: "n1", 1: "n2"}, replicas=2)
        silent = decided("a", revision=2, nodes={0: "n3", 1: "n2"}, replicas=2)
        assert check([base, silent], CAPS).bad_changes == ["a r2: replica 0 n1->n3, change says nothing"]
        wrong_from = decided("a", revision=2, nodes={0: "n3", 1: "n2"}, changes=[move(0, "n2", "n3")], replicas=2)
        assert len(check([base, wrong_from], CAPS).bad_changes) == 1
        phantom = decided("a", revision=2, nodes={0: "n1", 1: "n2"}, changes=[move(1, "n2", "n2")], replicas=2)
        assert len(check([base, phantom], CAPS).bad_changes) == 1

    def test_assignments_within_wanted_and_spread(self) -> None:
        r = check([decided("a", nodes={0: "n1", 3: "n2"}, replicas=2)], CAPS)
        assert r.bad_assignments == ["a r1: replicas [0, 3] of 2"]
        r = check([decided("a", nodes={0: "n1", 1: "n1"}, replicas=2, spread=True)], {"n1": (8.0, 8192, 0)})
        assert r.bad_assignments == ["a r1: spread broken, nodes ['n1', 'n1']"]


class TestDegraded:
    def test_a_missing_replica_is_named_by_the_degraded_event_of_its_revision(self) -> None:
        events = [
            decided("a", nodes={0: "n1", 1: "n2"}, replicas=2),
            decided("a", revision=2, nodes={0: "n1"}, changes=[move(1, "n2", None)], replicas=2),
            degraded("a", 2, [1]),
        ]
        r = check(events, CAPS, settled=fleet(lost=("n2",)))
        assert r.ok, r.violations
        assert r.degraded == 1

    def test_a_degraded_event_that_names_the_wrong_replicas(self) -> None:
        events = [
            decided("a", nodes={0: "n1", 1: "n2"}, replicas=2),
            decided("a", revision=2, nodes={0: "n1"}, changes=[move(1, "n2", None)], replicas=2),
            degraded("a", 2, [0]),
        ]
        assert check(events, CAPS).bad_degraded == ["a r2: missing [0], decided lacks [1]"]
        assert check([decided("a"), degraded("a", 2, [0])], CAPS).bad_degraded == [
            "a r2: missing [0], decided lacks None"
        ]


class TestPreemption:
    """§8.3: a victim's change names a job of strictly higher priority, whose decision lists it."""

    @staticmethod
    def history(victim_priority: int = 1, by_priority: int = 5, listed: bool = True) -> list[ev.Event]:
        # low fills n1 (2 of 4 cpu with "other"); high takes low's room, low moves to n2
        took = [ev.Preempted(job_id="low", replica=0, node_id="n1")] if listed else []
        return [
            decided("other", priority=victim_priority),
            decided("low", priority=victim_priority),
            decided("low", revision=2, nodes={0: "n2"}, changes=[move(0, "n1", "n2", "preempted", "high")],
                    priority=victim_priority),
            decided("high", priority=by_priority, preempted=took),
        ]  # fmt: skip

    def test_a_preemption_by_a_higher_priority_passes(self) -> None:
        r = check(self.history(), CAPS)
        assert r.ok, r.violations
        assert r.preempted == 1

    def test_a_victim_placed_again_later_is_no_new_preemption(self) -> None:
        # low was left missing (to null); a later revision places it again: from null, by null
        h = self.history()
        missing = decided(
            "low", revision=2, nodes={}, changes=[move(0, "n1", None, "preempted", "high")], priority=1, replicas=1
        )
        again = decided(
            "low", revision=3, nodes={0: "n3"}, changes=[move(0, None, "n3", "preempted")], priority=1, replicas=1
        )
        r = check([h[0], h[1], missing, degraded("low", 2, [0]), h[3], again], CAPS)
        assert r.ok, r.violations
        assert r.preempted == 1

    @pytest.mark.parametrize("by_priority", [1, 0])
    def test_a_victim_of_equal_or_lower_priority(self, by_priority: int) -> None:
        r = check(self.history(by_priority=by_priority), CAPS)
        assert r.bad_preemptions == [
            f"low r2 replica 0 on n1 preempted by high: priority {by_priority} does not exceed the victim's 1"
        ]

    def test_a_change_the_preempting_decision_does_not_list(self) -> None:
        r = check(self.history(listed=False), CAPS)
        assert r.bad_preemptions == ["low r2 replica 0 on n1 preempted by high: not in high's preempted list"]

    def test_a_listed_victim_without_a_change_before_the_decision(self) -> None:
        took = [ev.Preempted(job_id="low", replica=0, node_id="n1")]
        events = [decided("low", "n2", priority=1), decided("high", priority=5, preempted=took)]
        assert check(events, CAPS).bad_preemptions == [
            "high r1 lists low replica 0 on n1, no change of that job before it names it"
        ]
        # the victim's change stored after the preempting decision (not one chain, victim first)
        h = self.history()
        r = check([h[0], h[1], h[3], h[2]], CAPS)
        assert r.bad_preemptions == ["high r1 lists low replica 0 on n1, no change of that job before it names it"]

    def test_a_preemption_by_a_job_never_decided_or_that_says_never(self) -> None:
        h = self.history()
        r = check(h[:3], CAPS)
        assert r.bad_preemptions == ["low r2 replica 0 on n1 preempted by high: no decision of high"]
        spec = msgspec.structs.replace(SPEC, preemption="never", priority=5)
        never = ev.JobSubmitted(event_id="high:s", job_id="high", spec=spec)
        r = check([never, *h], CAPS)
        assert r.bad_preemptions == ["low r2 replica 0 on n1 preempted by high: high says preemption: never"]

    def test_without_the_victim_moving_first_its_node_is_overbooked(self) -> None:
        h = self.history()
        assert check([h[0], h[1], h[3], h[2]], CAPS).overbooked == ["n1"]


class TestSettled:
    def test_a_replica_left_on_a_lost_node(self) -> None:
        r = check([decided("a", "n2")], CAPS, settled=fleet(lost=("n2",)))
        assert r.unsettled == ["a r1: replicas on lost or draining nodes ['0@n2']"]

    def test_a_replica_left_on_a_draining_node(self) -> None:
        r = check([decided("a", "n3")], CAPS, settled=fleet(draining=("n3",)))
        assert len(r.unsettled) == 1

    def test_missing_without_degraded_is_unsettled_and_a_later_revision_ends_degraded(self) -> None:
        lost_one = decided("a", revision=2, nodes={0: "n1"}, changes=[move(1, "n2", None)], replicas=2)
        r = check([decided("a", nodes={0: "n1", 1: "n2"}, replicas=2), lost_one], CAPS, settled=fleet())
        assert r.unsettled == ["a r2: replicas [1] missing and not degraded"]
        # degraded at r2, then r3 moves replica 0 but still lacks 1: r2's degraded no longer covers it
        third = decided("a", revision=3, nodes={0: "n3"}, changes=[move(0, "n1", "n3", "drain")], replicas=2)
        events = [decided("a", nodes={0: "n1", 1: "n2"}, replicas=2), lost_one, degraded("a", 2, [1]), third]
        assert check(events, CAPS, settled=fleet()).unsettled == ["a r3: replicas [1] missing and not degraded"]
        back = decided("a", revision=3, nodes={0: "n1", 1: "n3"}, changes=[move(1, None, "n3")], replicas=2)
        events = [decided("a", nodes={0: "n1", 1: "n2"}, replicas=2), lost_one, degraded("a", 2, [1]), back]
        assert check(events, CAPS, settled=fleet(lost=("n2",))).ok

    def test_ended_jobs_are_not_expected_to_run(self) -> None:
        events = [decided("a", "n2"), cancelled("a"), released("a")]
        assert check(events, CAPS, settled=fleet(lost=("n2",))).ok

    def test_a_dedicated_job_short_of_a_running_instance(self) -> None:
        inst = [ev.Instance(instance_id=i, instance_type="t3.medium", replica=n) for n, i in enumerate(["i-1", "i-2"])]
        dd = ev.PlacementDecided(
            event_id="d:d",
            job_id="d",
            cluster="dedicated",
            technology="docker",
            strategy="best_fit",
            assignments=[ev.Assignment(replica=0, instance_type="t3.medium")],
            candidates=[],
        )
        events: list[ev.Event] = [dd, ev.ClusterProvisioned(event_id="d:p", job_id="d", instances=inst)]
        at = fleet()
        stopped = Settled(at.nodes, NOW, 30, {"i-1": "running", "i-2": "stopped"})
        assert check(events, CAPS, settled=stopped).unsettled == ["d: instances not running ['i-2']"]
        events.append(
            ev.ClusterInstanceReplaced(
                event_id="d:x", job_id="d", replica=1, old_instance_id="i-2", new_instance_id="i-3"
            )
        )
        healed = Settled(at.nodes, NOW, 30, {"i-1": "running", "i-2": "terminated", "i-3": "running"})
        assert check(events, CAPS, settled=healed).ok
        # the job ends: its current instances are torn down, the replaced one was terminated by the healer
        events += [cancelled("d"), ev.ClusterTornDown(event_id="d:t", job_id="d", instance_ids=["i-1"])]
        assert check(events, CAPS).instances_left == ["d:i-3"]


class TestResizing:
    def test_the_latest_scale_request_must_be_in_force_for_a_live_job(self) -> None:
        grown = decided("a", revision=2, nodes={0: "n1", 1: "n2"}, changes=[move(1, None, "n2", "scale")], replicas=2)
        events: list[ev.Event] = [decided("a", "n1"), scale_requested("a", 2)]
        assert check(events, CAPS, settled=fleet()).unsettled == ["a r1: wants 1, the latest job.scale asked 2"]
        assert check([*events, grown], CAPS, settled=fleet()).ok
        events += [grown, scale_requested("a", 1)]  # stored, not applied yet
        assert check(events, CAPS, settled=fleet()).unsettled == ["a r2: wants 2, the latest job.scale asked 1"]
        assert check([*events, cancelled("a"), released("a")], CAPS, settled=fleet()).ok  # ended: nothing owed

    def test_a_dedicated_revision_names_instance_types_in_its_changes(self) -> None:
        r1 = dedicated("d", 1, ["t3.medium"])
        good = dedicated("d", 2, ["t3.medium", "m5.large"], [move(1, None, "m5.large", "scale")])
        assert check([r1, good], CAPS).ok
        wrong = dedicated("d", 2, ["t3.medium", "m5.large"], [move(1, None, "t3.medium", "scale")])
        assert check([r1, wrong], CAPS).bad_changes == ["d r2: replica 1 None->m5.large, change says None->t3.medium"]
        gap = ev.PlacementDecided(**{**msgspec.structs.asdict(good), "assignments": good.assignments[1:]})
        assert check([r1, gap], CAPS).bad_assignments == ["d r2: dedicated replicas [1] of 2"]

    def test_a_dedicated_job_runs_the_instances_of_its_latest_revision_and_no_others(self) -> None:
        running = {"i-0": "running", "i-1": "running", "i-2": "running"}
        base = fleet()

        def at(tagged: dict[str, tuple[int, str]]) -> Settled:
            return Settled(base.nodes, NOW, 30, running, {"d": {i: Tagged(r, st_) for i, (r, st_) in tagged.items()}})

        events: list[ev.Event] = [dedicated("d", 1, ["t3.medium"]), provisioned("d", None, ["i-0"])]
        events += [dedicated("d", 2, ["t3.medium", "t3.medium"], [move(1, None, "t3.medium", "scale")])]
        two = at({"i-0": (0, "running"), "i-1": (1, "running")})
        assert check(events, CAPS, settled=two).unsettled == ["d: revision 2 decided, 1 provisioned"]
        events.append(provisioned("d", 2, ["i-0", "i-1"]))
        assert check(events, CAPS, settled=two).ok
        twice = at({"i-0": (0, "running"), "i-1": (1, "running"), "i-2": (1, "pending")})
        assert check(events, CAPS, settled=twice).unsettled == [
            "d r2: EC2 holds {1: ['i-1', 'i-2']} beyond one per replica below 2, none for []"
        ]
        # the job ends and is released: an instance still alive under its tag was left running
        events += [cancelled("d"), ev.ClusterTornDown(event_id="d:t", job_id="d", instance_ids=["i-0", "i-1"])]
        events.append(released("d"))
        left = at({"i-0": (0, "terminated"), "i-1": (1, "terminated"), "i-2": (1, "running")})
        assert check(events, CAPS, settled=left).instances_left == ["d:i-2"]


@st.composite
def histories(draw: st.DrawFn) -> list[ev.Event]:
    """Well-formed histories: jobs placed, moved (with correct changes), left short and
    degraded, released; the nodes are big enough for nothing to be overbooked."""
    nodes = ["n1", "n2", "n3"]
    out: list[ev.Event] = []
    live: dict[str, tuple[int, int, dict[int, str]]] = {}
    for step in range(draw(st.integers(1, 30))):
        op = draw(st.sampled_from(["new", "move", "scale", "end"]))
        if op == "new" or not live:
            j = f"j{step}"
            want = draw(st.integers(1, 3))
            placed = {r: draw(st.sampled_from(nodes)) for r in range(want)}
            live[j] = (1, want, placed)
            out.append(decided(j, nodes=placed, replicas=want))
        elif op == "move":
            j = draw(st.sampled_from(sorted(live)))
            rev, want, placed = live[j]
            r = draw(st.integers(0, want - 1))
            dst = draw(st.sampled_from([*nodes, None]))
            new = dict(placed)
            if dst is None:
                new.pop(r, None)
            else:
                new[r] = dst
            changes = [move(r, placed.get(r), new.get(r))] if placed.get(r) != new.get(r) else []
            live[j] = (rev + 1, want, new)
            out.append(decided(j, revision=rev + 1, nodes=new, changes=changes, replicas=want))
            short = sorted(set(range(want)) - set(new))
            if short:
                out.append(degraded(j, rev + 1, short))
        elif op == "scale":  # job.scale: shrink drops the highest replicas, growth places new ones
            j = draw(st.sampled_from(sorted(live)))
            rev, want, placed = live[j]
            n = draw(st.integers(1, 4))
            new = {r: w for r, w in placed.items() if r < n}
            new |= {r: draw(st.sampled_from(nodes)) for r in range(want, n)}
            gone = range(min(want, n), max(want, n))  # a missing replica no longer wanted has no change
            changes = [move(r, placed.get(r), new.get(r), "scale") for r in gone if placed.get(r) != new.get(r)]
            out.append(scale_requested(j, n))
            if n != want:  # the latest revision has the count already: nothing is stored
                live[j] = (rev + 1, n, new)
                out.append(decided(j, revision=rev + 1, nodes=new, changes=changes, replicas=n))
        else:
            j = draw(st.sampled_from(sorted(live)))
            del live[j]
            out += [cancelled(j), released(j)]
    return out


@settings(max_examples=200, deadline=None)
@given(histories())
def test_well_formed_histories_pass_and_the_ledger_matches_a_recount(events: list[ev.Event]) -> None:
    big = {n: (1000.0, 10**6, 0) for n in CAPS}
    assert check(events, big).ok, check(events, big).violations
    # a recount from scratch after every event: the peak booking per node equals what a
    # capacity of that peak allows, and one less is found overbooked
    latest: dict[str, dict[int, str]] = {}
    peak: dict[str, float] = defaultdict(float)
    for e in events:
        if isinstance(e, ev.PlacementDecided):
            latest[e.job_id] = {a.replica: a.node_id for a in e.assignments if a.node_id}
        elif isinstance(e, ev.PlacementReleased):
            latest.pop(e.job_id, None)
        booked: dict[str, float] = defaultdict(float)
        for placed in latest.values():
            for n in placed.values():
                booked[n] += R.cpu
        for n, v in booked.items():
            peak[n] = max(peak[n], v)
    for n, p in peak.items():
        assert n not in check(events, {n: (p, 10**6, 0)}).overbooked
        assert check(events, {n: (p - 1, 10**6, 0)}).overbooked == [n]
