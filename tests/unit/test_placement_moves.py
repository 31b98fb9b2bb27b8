"""Re-placement (moves.replan) and the revision ledger (World), without NATS: which replicas
move where and why, what a degraded job says, and that reservations follow revisions."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import events as ev
from services.placement.moves import Replan, events_of, replan
from services.placement.state import World
from tests.support.events import free_node
from tests.support.placement import NOW, TTL, apply, assert_booked_as_reserved, decision, fleet

LOST = 30.0


def plan_of(w: World, job_id: str) -> Replan | None:
    return replan(w.reservations[job_id], w, NOW, TTL)


def store(w: World, job_id: str) -> list[ev.PlacementDecided | ev.PlacementDegraded]:
    """Re-place ``job_id`` and apply what would be stored, as the ledger would."""
    plan = plan_of(w, job_id)
    assert plan is not None
    out = events_of(w.reservations[job_id], plan)
    apply(w, out)
    return out


def lose(w: World, *node_ids: str) -> None:
    """Every other node reports again; ``node_ids`` stay silent past ``node_lost_s``."""
    later = NOW + LOST
    for nid, node in list(w.nodes.items()):
        if nid not in node_ids:
            w.update_node(node.status, later)
    assert sorted(w.find_lost(later, LOST)) == sorted(node_ids)


class TestReplicasOnALeavingNode:
    def test_a_lost_node_s_replica_moves_to_the_best_node_and_the_others_stay(self) -> None:
        w = fleet(a=8, b=8, c=6)
        w.apply_decided(decision("j", {0: "a", 1: "b"}))
        w.find_lost(NOW + LOST, LOST)  # nobody reported since: every node is lost
        w.update_node(free_node("b"), NOW + LOST)
        w.update_node(free_node("c", 6), NOW + LOST)
        plan = plan_of(w, "j")
        assert plan is not None and plan.failure is None and plan.missing == []
        assert [(a.replica, a.node_id) for a in plan.assignments] == [(0, "c"), (1, "b")]  # 6 cpu each, c more memory
        assert plan.changes == [ev.Change(replica=0, from_="a", to="c", reason="node_lost")]

    def test_a_down_node_is_lost_and_a_draining_one_drains(self) -> None:
        w = fleet(a=8, b=8, c=8, d=8)
        w.apply_decided(decision("j", {0: "a", 1: "b"}))
        w.update_node(free_node("a", state="down"), NOW)
        w.update_node(free_node("b", state="draining"), NOW)
        assert w.evacuate == {"a", "b"} and w.jobs_to_move() == ["j"]
        plan = plan_of(w, "j")
        assert plan is not None
        assert [(c.replica, c.from_, c.to, c.reason) for c in plan.changes] == [
            (0, "a", "c", "node_lost"),
            (1, "b", "d", "drain"),
        ]

    def test_a_drain_fact_takes_the_node_out_of_the_index_until_undrained(self) -> None:
        w = fleet(a=8, b=4)
        w.apply_decided(decision("j", {0: "a"}))
        w.set_drained("a", True)
        assert w.nodes["a"].key is None and w.evacuate == {"a"}
        store(w, "j")
        assert w.reservations["j"].node_ids == ("b",) and not w.evacuate
        assert w.nodes["a"].reserved_cpu == 0
        w.set_drained("a", False)
        assert w.nodes["a"].key is not None and plan_of(w, "j") is None

    def test_spread_true_never_puts_a_moved_replica_beside_a_kept_one(self) -> None:
        w = fleet(a=8, b=8, c=2)
        w.apply_decided(decision("j", {0: "a", 1: "b"}, spread=True))
        lose(w, "a")
        plan = plan_of(w, "j")
        assert plan is not None
        assert [(a.replica, a.node_id) for a in plan.assignments] == [(0, "c"), (1, "b")]  # b has most room

    def test_strategy_spread_counts_the_kept_replicas(self) -> None:
        w = fleet(a=8, b=8, c=4)
        w.apply_decided(decision("j", {0: "a", 1: "b", 2: "b"}, strategy="spread"))
        lose(w, "a")
        plan = plan_of(w, "j")
        assert plan is not None  # c holds none of the job, b two: c although b has more room
        assert plan.changes == [ev.Change(replica=0, from_="a", to="c", reason="node_lost")]

    def test_best_fit_uses_the_kept_node_when_it_has_most_room(self) -> None:
        w = fleet(a=8, b=16, c=4)
        w.apply_decided(decision("j", {0: "a", 1: "b"}))
        lose(w, "a")
        plan = plan_of(w, "j")
        assert plan is not None and plan.changes[0].to == "b"  # 14 free after its own replica

    def test_nothing_to_do_when_no_replica_is_on_a_leaving_node(self) -> None:
        w = fleet(a=8, b=8)
        w.apply_decided(decision("j", {0: "a"}))
        assert plan_of(w, "j") is None


class TestDegraded:
    def test_a_replica_that_fits_nowhere_is_absent_and_explained_then_placed_again(self) -> None:
        w = fleet(a=4, b=4)
        w.apply_decided(decision("j", {0: "a", 1: "b"}, spread=True))
        lose(w, "a")
        decided, degraded = store(w, "j")
        assert isinstance(decided, ev.PlacementDecided) and isinstance(degraded, ev.PlacementDegraded)
        assert decided.revision == 2 and decided.event_id == "j:placement.decided:2"
        assert [(a.replica, a.node_id) for a in decided.assignments] == [(1, "b")]
        assert decided.changes == [ev.Change(replica=0, from_="a", to=None, reason="node_lost")]
        assert decided.replicas == 2 and decided.wanted == 2
        assert degraded.revision == 2 and degraded.missing == [0] and degraded.event_id == "j:placement.degraded:2"
        assert degraded.nodes_total == 2 and degraded.excluded.inactive == 1
        assert degraded.reason.startswith("0/2 nodes available: 1 inactive")
        assert w.short == {"j"} and w.nodes["a"].reserved_cpu == 0 and w.nodes["b"].reserved_cpu == 2

        assert plan_of(w, "j") is None  # retried without new capacity: no event at all
        w.update_node(free_node("c", 4), NOW + LOST)
        (third,) = store(w, "j")
        assert isinstance(third, ev.PlacementDecided) and third.revision == 3
        assert third.changes == [ev.Change(replica=0, from_=None, to="c", reason="node_lost")]
        assert w.short == set()

    def test_a_drained_replica_placed_again_keeps_its_reason(self) -> None:
        w = fleet(a=4)
        w.apply_decided(decision("j", {0: "a"}))
        w.set_drained("a", True)
        decided, _ = store(w, "j")
        assert isinstance(decided, ev.PlacementDecided) and decided.changes[0].reason == "drain"
        w.update_node(free_node("b", 4), NOW)
        (again,) = store(w, "j")
        assert isinstance(again, ev.PlacementDecided)
        assert again.changes == [ev.Change(replica=0, from_=None, to="b", reason="drain")]

    def test_a_degraded_event_is_due_again_after_a_restart_that_never_saw_it(self) -> None:
        w = fleet(a=2)
        w.apply_decided(decision("j", {0: "a"}, revision=2, replicas=2))  # replica 1 missing
        plan = plan_of(w, "j")
        assert plan is not None and plan.changes == [] and plan.missing == [1]
        (degraded,) = events_of(w.reservations["j"], plan)
        assert isinstance(degraded, ev.PlacementDegraded) and degraded.revision == 2
        w.note_degraded("j", 2)
        assert plan_of(w, "j") is None


class TestTheLedgerFollowsRevisions:
    def test_a_higher_revision_replaces_the_booking_and_older_or_equal_ones_are_ignored(self) -> None:
        w = fleet(a=8, b=8)
        first, second = decision("j", {0: "a"}), decision("j", {0: "b"}, revision=2)
        assert w.apply_decided(first) and w.apply_decided(second)
        assert not w.apply_decided(first) and not w.apply_decided(second)  # replay, redelivery
        assert (w.nodes["a"].reserved_cpu, w.nodes["b"].reserved_cpu) == (0, 2)
        assert w.holders == {"b": {"j": 1}}
        assert w.release("j") and not w.release("j")
        assert w.nodes["b"].reserved_cpu == 0 and w.holders == {}
        assert not w.apply_decided(decision("j", {0: "a"}, revision=3))  # released: never booked again

    def test_undo_restores_the_previous_revision_exactly(self) -> None:
        w = fleet(a=8, b=8)
        w.apply_decided(decision("j", {0: "a", 1: "a"}))
        before = msgspec.structs.asdict(w.reservations["j"].decision)  # type: ignore[arg-type]
        w.decide_locally(decision("j", {0: "b", 1: "a"}, revision=2))
        assert w.nodes["b"].reserved_cpu == 2
        w.undo("j")
        assert w.nodes["a"].reserved_cpu == 4 and w.nodes["b"].reserved_cpu == 0
        assert w.reservations["j"].revision == 1
        assert msgspec.structs.asdict(w.reservations["j"].decision) == before  # type: ignore[arg-type]

    def test_a_stored_revision_arriving_while_ours_is_in_flight_is_applied_after_the_undo(self) -> None:
        w = fleet(a=8, b=8, c=8)
        w.apply_decided(decision("j", {0: "a"}))
        w.decide_locally(decision("j", {0: "b"}, revision=2))
        assert not w.apply_decided(decision("j", {0: "c"}, revision=2))  # another instance's, stored first
        w.undo("j")
        assert w.reservations["j"].node_ids == ("c",)
        assert [w.nodes[n].reserved_cpu for n in "abc"] == [0, 0, 2]

    def test_a_release_while_in_flight_wins(self) -> None:
        w = fleet(a=8)
        w.decide_locally(decision("j", {0: "a"}))
        w.release("j")
        w.undo("j")
        assert w.reservations == {} and w.nodes["a"].reserved_cpu == 0

    def test_a_booking_on_a_node_never_heard_of_is_lost_when_marked_so(self) -> None:
        w = World()
        w.apply_decided(decision("j", {0: "ghost"}))
        assert w.unheard == {"ghost"} and w.jobs_to_move() == []
        w.mark_lost("ghost")
        assert w.jobs_to_move() == ["j"]
        w.update_node(free_node("ghost"), NOW)  # it reports after all: an ordinary node again
        assert w.jobs_to_move() == [] and w.nodes["ghost"].reserved_cpu == 2


# --- property: after any history, bookings are the live jobs' current assignments ----------
NODES = ("n0", "n1", "n2", "n3")
steps = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 3), st.booleans()),
        st.tuples(st.just("lose"), st.sampled_from(NODES), st.booleans()),
        st.tuples(st.just("drain"), st.sampled_from(NODES), st.booleans()),
        st.tuples(st.just("return"), st.sampled_from(NODES), st.booleans()),
        st.tuples(st.just("release"), st.integers(0, 9), st.booleans()),
        st.tuples(st.just("undo"), st.integers(0, 9), st.booleans()),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_bookings_equal_the_current_assignments_of_live_jobs_and_never_exceed_capacity(
    history: list[tuple[str, object, bool]],
) -> None:
    from services.placement.engine import Placed, place
    from services.placement.moves import spec_of

    w = fleet(**dict.fromkeys(NODES, 4.0))
    jobs: list[str] = []
    for op, arg, flag in history:
        if op == "submit":
            job_id = f"j{len(jobs)}"
            jobs.append(job_id)
            proto = decision(job_id, {}, replicas=int(arg), spread=flag)  # type: ignore[call-overload]
            r = place(spec_of(proto, int(arg)), w, NOW, TTL)  # type: ignore[call-overload]
            if isinstance(r, Placed):
                w.apply_decided(msgspec.structs.replace(proto, assignments=r.assignments))
        elif op == "lose":
            w.update_node(free_node(str(arg), 4, state="down"), NOW)
        elif op == "drain":
            w.set_drained(str(arg), flag)
        elif op == "return":
            w.update_node(free_node(str(arg), 4), NOW)
        elif op == "release" and jobs:
            w.release(jobs[int(arg) % len(jobs)])  # type: ignore[call-overload]
        elif op == "undo" and jobs:  # a re-placement refused by the stream
            job_id = jobs[int(arg) % len(jobs)]  # type: ignore[call-overload]
            res = w.reservations.get(job_id)
            plan = replan(res, w, NOW, TTL) if res is not None else None
            if plan is not None and plan.changes:
                w.decide_locally(events_of(res, plan)[0])  # type: ignore[arg-type]
                w.undo(job_id)
        for job_id in w.jobs_to_move() + sorted(w.short):
            res = w.reservations.get(job_id)
            plan = replan(res, w, NOW, TTL) if res is not None else None
            if plan is not None:
                for e in events_of(res, plan):  # type: ignore[arg-type]
                    if isinstance(e, ev.PlacementDecided):
                        w.apply_decided(e)
                    else:
                        w.note_degraded(e.job_id, e.revision)
        assert_booked_as_reserved(w, NODES)
        for nid in NODES:
            node = w.nodes[nid]
            assert (nid in w.evacuate) == (node.leaving() is not None and bool(w.holders.get(nid)))
