"""Resizing (``job.scale``) without NATS: which replicas go, where new ones are placed (spread
kept), what a growth that fits nowhere says, dedicated revisions, and that reservations follow."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import events as ev
from schemas import subjects as s
from services.placement.moves import replan
from services.placement.scaling import rescale_dedicated, rescale_shared
from services.placement.state import World
from tests.support.events import free_node
from tests.support.placement import NOW, RES, TTL, apply, assert_booked_as_reserved, decision, fleet


def scale(w: World, job_id: str, replicas: int) -> list[ev.PlacementDecided | ev.PlacementDegraded]:
    """Resize ``job_id`` and apply what would be stored, as the ledger would."""
    out = rescale_shared(w.reservations[job_id], replicas, w, NOW, TTL)
    apply(w, out)
    return out


def booked(w: World) -> dict[str, float]:
    return {nid: n.reserved_cpu for nid, n in w.nodes.items() if n.reserved_cpu}


class TestShrink:
    def test_removes_the_highest_replica_numbers_and_releases_their_reservations_once(self) -> None:
        w = fleet(a=8, b=8, c=8)
        w.apply_decided(decision("j", {0: "a", 1: "b", 2: "c"}))

        (second,) = scale(w, "j", 1)

        assert isinstance(second, ev.PlacementDecided)
        assert (second.revision, second.replicas, second.event_id) == (2, 1, "j:placement.decided:2")
        assert [(a.replica, a.node_id) for a in second.assignments] == [(0, "a")]
        assert second.changes == [
            ev.Change(replica=1, from_="b", to=None, reason="scale"),
            ev.Change(replica=2, from_="c", to=None, reason="scale"),
        ]
        assert booked(w) == {"a": 2}
        assert not w.apply_decided(second)  # a redelivery books nothing twice
        assert booked(w) == {"a": 2} and w.short == set()

    def test_a_missing_replica_above_the_new_count_is_simply_no_longer_wanted(self) -> None:
        w = fleet(a=8)
        w.apply_decided(decision("j", {0: "a"}, replicas=2))  # replica 1 fits nowhere
        assert w.short == {"j"}

        (second,) = scale(w, "j", 1)

        assert isinstance(second, ev.PlacementDecided) and second.changes == [] and second.replicas == 1
        assert w.short == set()

    def test_the_same_count_is_a_no_op(self) -> None:
        w = fleet(a=8)
        w.apply_decided(decision("j", {0: "a"}))
        assert rescale_shared(w.reservations["j"], 1, w, NOW, TTL) == []


class TestGrowth:
    def test_places_the_new_replicas_with_the_job_s_strategy(self) -> None:
        w = fleet(a=8, b=6, c=4)
        w.apply_decided(decision("j", {0: "a"}))

        (second,) = scale(w, "j", 3)

        assert isinstance(second, ev.PlacementDecided) and second.replicas == 3
        # best_fit: a and b both have 6 cpu free, b more memory (a holds replica 0); then a
        assert [(c.replica, c.from_, c.to, c.reason) for c in second.changes] == [
            (1, None, "b", "scale"),
            (2, None, "a", "scale"),
        ]
        assert booked(w) == {"a": 4, "b": 2}

    def test_spread_is_kept_for_the_new_replicas(self) -> None:
        w = fleet(a=8, b=8, c=2)
        w.apply_decided(decision("j", {0: "a", 1: "b"}, spread=True))

        (second,) = scale(w, "j", 3)

        assert isinstance(second, ev.PlacementDecided)
        assert [(a.replica, a.node_id) for a in second.assignments] == [(0, "a"), (1, "b"), (2, "c")]

    def test_that_fits_nowhere_is_a_revision_of_the_new_count_and_a_degraded_event(self) -> None:
        w = fleet(a=8, b=8)
        w.apply_decided(decision("j", {0: "a", 1: "b"}, spread=True))

        second, gone = scale(w, "j", 4)

        assert isinstance(second, ev.PlacementDecided) and second.changes == [] and second.replicas == 4
        assert isinstance(gone, ev.PlacementDegraded)
        assert (gone.revision, gone.missing, gone.nodes_total) == (2, [2, 3], 2)
        assert gone.excluded.spread == 2 and "only 0 of 2 replicas fit" in gone.reason
        assert w.short == {"j"} and w.degraded == {"j": 2}
        assert replan(w.reservations["j"], w, NOW, TTL) is None  # a quiet retry says nothing new

        w.update_node(free_node("c"), NOW)  # capacity appears: the retry places replica 2, reason scale
        plan = replan(w.reservations["j"], w, NOW, TTL)
        assert plan is not None and plan.missing == [3]
        assert plan.changes == [ev.Change(replica=2, from_=None, to="c", reason="scale")]

    def test_with_a_lost_replica_in_the_same_pass_moves_it_in_the_same_revision(self) -> None:
        w = fleet(a=8, b=8, c=8)
        w.apply_decided(decision("j", {0: "a", 1: "b"}))
        w.update_node(free_node("a", state="down"), NOW)

        (second,) = scale(w, "j", 3)

        assert isinstance(second, ev.PlacementDecided)
        assert [(c.replica, c.from_, c.to, c.reason) for c in second.changes] == [
            (0, "a", "c", "node_lost"),
            (2, None, "b", "scale"),
        ]
        assert booked(w) == {"b": 4, "c": 2} and w.evacuate == set()


def dedicated(replicas: int, revision: int = 1) -> ev.PlacementDecided:
    return ev.PlacementDecided(
        event_id=ev.revision_event_id("d", s.PLACEMENT_DECIDED, revision),
        job_id="d",
        cluster="dedicated",
        technology="docker",
        strategy="best_fit",
        assignments=[ev.Assignment(replica=r, instance_type="t3.large") for r in range(replicas)],
        candidates=[ev.Candidate(instance_type="t3.large")],
        resources=RES,
        revision=revision,
        replicas=replicas,
    )


class TestDedicated:
    def test_growth_lists_an_instance_type_per_new_replica(self) -> None:
        out = rescale_dedicated(dedicated(2), 4)
        assert out is not None and (out.revision, out.replicas, out.cluster) == (2, 4, "dedicated")
        assert [(a.replica, a.instance_type) for a in out.assignments] == [(r, "t3.large") for r in range(4)]
        assert [(c.replica, c.from_, c.to, c.reason) for c in out.changes] == [
            (2, None, "t3.large", "scale"),
            (3, None, "t3.large", "scale"),
        ]

    def test_shrink_drops_the_highest_replicas(self) -> None:
        out = rescale_dedicated(dedicated(3, revision=2), 1)
        assert out is not None and out.event_id == "d:placement.decided:3"
        assert [a.replica for a in out.assignments] == [0]
        assert [(c.replica, c.from_, c.to) for c in out.changes] == [(1, "t3.large", None), (2, "t3.large", None)]

    def test_the_same_count_is_a_no_op(self) -> None:
        assert rescale_dedicated(dedicated(2), 2) is None


# --- property: after any history of scales, losses and releases ---------------------------
NODES = ("n0", "n1", "n2", "n3")
steps = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 3), st.booleans()),
        st.tuples(st.just("scale"), st.integers(0, 9), st.integers(1, 6)),
        st.tuples(st.just("lose"), st.sampled_from(NODES), st.booleans()),
        st.tuples(st.just("return"), st.sampled_from(NODES), st.booleans()),
        st.tuples(st.just("release"), st.integers(0, 9), st.booleans()),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_reservations_equal_the_current_assignments_and_shrink_removes_the_highest(
    history: list[tuple[str, object, object]],
) -> None:
    w = fleet(**dict.fromkeys(NODES, 4.0))
    jobs: list[str] = []
    for op, arg, extra in history:
        if op == "submit":
            job_id = f"j{len(jobs)}"
            jobs.append(job_id)
            w.apply_decided(decision(job_id, {}, replicas=0, spread=bool(extra)))
            apply(w, rescale_shared(w.reservations[job_id], int(arg), w, NOW, TTL))  # type: ignore[call-overload]
        elif op == "scale" and jobs:
            job_id = jobs[int(arg) % len(jobs)]  # type: ignore[call-overload]
            res = w.reservations.get(job_id)
            if res is None:
                continue  # released: nothing
            before = res.assignments()
            n = int(extra)  # type: ignore[call-overload]
            scale(w, job_id, n)
            after = w.reservations[job_id]
            assert after.decision is not None and after.decision.wanted == n
            assert all(r < n for r in after.replicas)
            assert {r: nid for r, nid in before.items() if r < n} == {
                r: nid for r, nid in after.assignments().items() if r in before
            }  # the kept replicas stay where they were (no node was leaving at that moment)
        elif op == "lose":
            w.update_node(free_node(str(arg), 4, state="down"), NOW)
        elif op == "return":
            w.update_node(free_node(str(arg), 4), NOW)
        elif op == "release" and jobs:
            w.release(jobs[int(arg) % len(jobs)])  # type: ignore[call-overload]
        for job_id in w.jobs_to_move() + sorted(w.short):
            res = w.reservations.get(job_id)
            plan = replan(res, w, NOW, TTL) if res is not None else None
            if plan is not None:
                apply(w, rescale_shared(res, plan.wanted, w, NOW, TTL))  # type: ignore[arg-type]
        assert_booked_as_reserved(w, NODES)
