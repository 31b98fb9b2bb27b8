"""Placement policies (§8.3, §8.5): preemption, topology spread (``spread_by``), geography
(``near``, strategy ``nearest``). Table-driven cases with hand-computed assignments, and
hypothesis properties against brute force on small fleets. Pure: no NATS."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from schemas import events as ev
from schemas.jobs import Constraints, JobSpec, Near, Resources, Workload
from services.placement import geo, preempt
from services.placement.engine import NotPlaced, Placed, place
from services.placement.state import World
from tests.support.events import decided, free_node

NOW = 100.0
TTL = 15.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def node(
    world: World, nid: str, cpu: float, zone: str | None = None, at: tuple[float, float] | None = None, mem: int = 65536
) -> None:
    world.update_node(
        free_node(
            nid,
            cpu,
            memory_mb=mem,
            labels={} if zone is None else {"zone": zone},
            location=None if at is None else ev.Location(lat=at[0], lon=at[1]),
        ),
        NOW,
    )


def spec(replicas: int = 1, cpu: float = 2, strategy: str = "best_fit", priority: int = 0, **c: Any) -> JobSpec:
    return JobSpec(
        name="j",
        technology="docker",
        replicas=replicas,
        resources=Resources(cpu=cpu, memory_mb=512),
        constraints=Constraints(**c),
        cluster="shared",
        workload=Workload(),
        strategy=strategy,  # type: ignore[arg-type]
        priority=priority,
    )


def book(world: World, job_id: str, nodes: list[str], cpu: float, priority: int, minute: int = 0) -> None:
    """A stored revision 1 of a shared job (replica i on nodes[i])."""
    world.apply_decided(
        ev.PlacementDecided(
            event_id=f"{job_id}:d",
            job_id=job_id,
            at=T0 + timedelta(minutes=minute),
            cluster="shared",
            technology="docker",
            strategy="best_fit",
            assignments=[ev.Assignment(replica=i, node_id=n) for i, n in enumerate(nodes)],
            candidates=[],
            resources=Resources(cpu=cpu, memory_mb=512),
            replicas=len(nodes),
            constraints=Constraints(),
            priority=priority,
        )
    )


def nodes_of(result: Placed | NotPlaced) -> list[str]:
    assert isinstance(result, Placed), result
    return [a.node_id or "" for a in result.assignments]


# --- topology spread ------------------------------------------------------------------
ZONED = [("a1", 8, "a"), ("a2", 4, "a"), ("b1", 6, "b"), ("c1", 2, "c"), ("x1", 16, None)]


@pytest.mark.parametrize(
    ("replicas", "extra", "expected"),
    [
        # domains a, b, c (x1 has no zone): one per zone first, best_fit inside each zone
        (3, {}, ["a1", "b1", "c1"]),
        # 4th goes to a least-filled domain again: a1 (6 free) beats b1 (4 free) on best_fit
        (4, {}, ["a1", "b1", "c1", "a1"]),
        # c is full after one replica (2 cpu): nothing more can keep skew 1 ... a2/b1 hold more,
        # but counts a=2, b=2, c=1: the 6th must go to c, which is full
        (5, {}, ["a1", "b1", "c1", "a1", "b1"]),
        # first_fit inside each zone, zones in the order the strategy ranks their best node
        (3, {"strategy": "first_fit"}, ["a1", "b1", "c1"]),
        # constraints.spread: never twice on one node, so the 4th takes a2; a 5th would need b or
        # c, whose only nodes hold one already: 5 do not fit (below)
        (4, {"spread": True}, ["a1", "b1", "c1", "a2"]),
    ],
)
def test_spread_by_places_one_per_domain_in_turn(replicas: int, extra: dict[str, Any], expected: list[str]) -> None:
    w = World()
    for nid, cpu, zone in ZONED:
        node(w, nid, cpu, zone)
    s = spec(replicas, strategy=extra.pop("strategy", "best_fit"), spread_by="zone", **extra)
    assert nodes_of(place(s, w, NOW, TTL)) == expected
    if extra.get("spread"):
        assert isinstance(place(spec(5, spread_by="zone", spread=True), w, NOW, TTL), NotPlaced)


def test_spread_by_fails_when_the_least_filled_zone_is_full_and_says_so() -> None:
    w = World()
    for nid, cpu, zone in ZONED:
        node(w, nid, cpu, zone)
    got = place(spec(6, spread_by="zone"), w, NOW, TTL)
    assert isinstance(got, NotPlaced)
    assert got.excluded.spread_by == 1  # x1 has no zone label
    assert "1 lack label zone (spread_by)" in got.reason
    assert "with spread_by zone (max skew 1)" in got.reason


def test_spread_by_counts_kept_replicas_when_growing() -> None:
    w = World()
    for nid, cpu, zone in ZONED:
        node(w, nid, cpu, zone)
    # two replicas kept in zone a: the next go to b and c before a again
    got = place(spec(2, spread_by="zone"), w, NOW, TTL, kept=["a1", "a2"], partial=True)
    assert nodes_of(got) == ["b1", "c1"]


# --- geography ----------------------------------------------------------------------
CITIES = {
    "berlin": (52.52, 13.40),
    "potsdam": (52.39, 13.06),
    "munich": (48.14, 11.58),
    "frankfurt": (50.11, 8.68),
    "madrid": (40.42, -3.70),
}


def geo_world() -> World:
    w = World()
    for i, (name, at) in enumerate(CITIES.items()):
        node(w, name, 4 + 2 * i, "z", at)
    node(w, "nowhere", 64)  # no location: never qualifies with near
    return w


@pytest.mark.parametrize(
    ("strategy", "radius", "replicas", "expected"),
    [
        # from Berlin: berlin 0 km (4 cpu), potsdam 26 (6), frankfurt 424 (10), munich 504 (8)
        ("nearest", 1000, 3, ["berlin", "berlin", "potsdam"]),
        ("nearest", 1000, 4, ["berlin", "berlin", "potsdam", "potsdam"]),
        # best_fit within 600 km: frankfurt (10 free), then munich (8 cpu, more memory free than
        # frankfurt's 8 after one replica), then frankfurt (8) over munich (6)
        ("best_fit", 600, 3, ["frankfurt", "munich", "frankfurt"]),
        ("nearest", 50, 1, ["berlin"]),
        ("first_fit", 1000, 3, ["berlin", "berlin", "frankfurt"]),  # madrid is 1,870 km away
    ],
)
def test_near_keeps_nodes_within_the_radius(strategy: str, radius: float, replicas: int, expected: list[str]) -> None:
    near = Near(lat=52.52, lon=13.40, max_km=radius)
    got = place(spec(replicas, strategy=strategy, near=near), geo_world(), NOW, TTL)
    assert nodes_of(got) == expected
    assert isinstance(got, Placed)
    for c in got.candidates:
        assert c.distance_km is not None and c.distance_km <= radius


def test_near_counts_far_and_unlocated_nodes_under_distance() -> None:
    got = place(spec(1, near=Near(lat=0.0, lon=0.0, max_km=100)), geo_world(), NOW, TTL)
    assert isinstance(got, NotPlaced)
    assert got.excluded.distance == 6
    assert got.reason == "0/6 nodes available: 6 too far or without location (near)"


def test_distance_is_great_circle() -> None:
    assert geo.distance_km(52.52, 13.40, 48.14, 11.58) == pytest.approx(504, abs=2)
    assert geo.distance_km(0, 179.5, 0, -179.5) == pytest.approx(111.2, abs=0.5)  # across the antimeridian


# --- preemption ---------------------------------------------------------------------
def urgent(placed: Placed, s: JobSpec) -> ev.PlacementDecided:
    """The preempting job's decision, as the decider would apply it locally before its victims' revisions."""
    return decided(
        "urgent", event_id="urgent:d", assignments=placed.assignments, resources=s.resources, priority=s.priority
    )


def full_world() -> World:
    """Three 4-cpu nodes, full: a (low:0, 2 cpu, x2), b (mid:5 4 cpu), c (low:1 1 cpu x4)."""
    w = World()
    for nid in "abc":
        node(w, nid, 4)
    book(w, "low-a1", ["a"], 2, 0, minute=1)
    book(w, "low-a2", ["a"], 2, 0, minute=2)
    book(w, "mid", ["b"], 4, 5, minute=3)
    for k in range(4):
        book(w, f"low-c{k}", ["c"], 1, 1, minute=4 + k)
    return w


@pytest.mark.parametrize(
    ("cpu", "priority", "expected"),
    [
        # 2 cpu: one victim on a (priority 0) beats two on c; the most recently placed of a's two
        (2, 10, [("low-a2", 0, "a")]),
        # 4 cpu at priority 10: a's two (highest priority 0) beat b's one (priority 5)? no: fewest first
        (4, 10, [("mid", 0, "b")]),
        # 4 cpu at priority 5: mid (5) is not lower; a's two victims
        (4, 5, [("low-a1", 0, "a"), ("low-a2", 0, "a")]),
        # 3 cpu at priority 3: a needs both (4 cpu), c needs three of four: a wins (2 victims)
        (3, 3, [("low-a1", 0, "a"), ("low-a2", 0, "a")]),
    ],
)
def test_preemption_chooses_the_fewest_victims_of_lowest_priority(
    cpu: float, priority: int, expected: list[tuple[str, int, str]]
) -> None:
    w = full_world()
    s = spec(1, cpu=cpu, priority=priority)
    assert isinstance(place(s, w, NOW, TTL, explain_failure=False), NotPlaced)
    got = preempt.make_room(s, "urgent", w, NOW, TTL, ())
    assert not isinstance(got, str), got
    _, room = got
    assert [(v.job_id, v.replica, v.node_id) for v in room.preempted()] == expected
    room.undo(w)
    assert all(not w.tentative(j) for j in w.reservations)


def test_preemption_never_takes_from_equal_or_higher_priority() -> None:
    w = World()
    node(w, "a", 4)
    book(w, "same", ["a"], 4, 7)
    got = preempt.make_room(spec(1, cpu=2, priority=7), "urgent", w, NOW, TTL, ())
    assert isinstance(got, str) and "priority below 7" in got
    assert w.reservations["same"].revision == 1 and not w.tentative("same")


def test_victims_move_elsewhere_or_become_degraded_with_the_reason() -> None:
    w = full_world()
    node(w, "d", 1)  # room for one 1-cpu victim elsewhere
    s = spec(1, cpu=3, priority=3)
    got = preempt.make_room(s, "urgent", w, NOW, TTL, ())
    assert not isinstance(got, str)
    placed, room = got
    # d (1 cpu free) fits 3 cpu nowhere: 3 of c's four 1-cpu replicas, or a's two: a wins (2 victims)
    assert {v.job_id for v in room.victims} == {"low-a1", "low-a2"}
    w.decide_locally(urgent(placed, s))
    out = preempt.replace_victims(room, w, NOW, TTL)
    decided = [o for o in out if isinstance(o, ev.PlacementDecided)]
    degraded = [o for o in out if isinstance(o, ev.PlacementDegraded)]
    assert [(d.job_id, d.revision) for d in decided] == [("low-a1", 2), ("low-a2", 2)]
    for d in decided:
        (c,) = d.changes
        assert (c.from_, c.to, c.reason, c.by) == ("a", None, "preempted", "urgent")  # 2 cpu fits nowhere
    assert [g.job_id for g in degraded] == ["low-a1", "low-a2"]
    assert all(g.reason.startswith("preempted by urgent: ") for g in degraded)
    _no_overbooking(w)


def _no_overbooking(w: World) -> None:
    for n in w.nodes.values():
        assert n.reserved_cpu <= n.status.cpu_cores + 1e-9, n.node_id


# --- properties ---------------------------------------------------------------------
@st.composite
def fleets(draw: st.DrawFn) -> tuple[World, list[tuple[str, str, float, int]]]:
    """A small full-ish fleet: nodes of 2-8 cpu, replicas of jobs of priority 0-9 on them."""
    w = World()
    placed: list[tuple[str, str, float, int]] = []
    for i in range(draw(st.integers(1, 4))):
        nid = f"n{i}"
        cap = draw(st.sampled_from([2, 4, 8]))
        node(w, nid, cap)
        left = cap
        for k in range(draw(st.integers(0, 4))):
            cpu = draw(st.sampled_from([1, 2]))
            if cpu > left:
                break
            left -= cpu
            prio = draw(st.integers(0, 9))
            job_id = f"j{i}{k}"
            book(w, job_id, [nid], cpu, prio, minute=draw(st.integers(0, 50)))
            placed.append((job_id, nid, cpu, prio))
    return w, placed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), st.sampled_from([1, 2, 3, 4]), st.integers(1, 10))
def test_preemption_evicts_only_lower_priority_no_more_than_needed_and_never_overbooks(
    fleet: tuple[World, list[tuple[str, str, float, int]]], cpu: int, priority: int
) -> None:
    w, placed = fleet
    note(repr(placed))
    note(repr({n.node_id: n.status.cpu_cores for n in w.nodes.values()}))
    s = spec(1, cpu=cpu, priority=priority)
    if isinstance(place(s, w, NOW, TTL, explain_failure=False), Placed):
        return
    # brute force: the fewest lower-priority replicas on one node that free cpu for the job
    best: int | None = None
    for nid, n in w.nodes.items():
        lower = [c for (_, at, c, p) in placed if at == nid and p < priority]
        free = n.status.cpu_cores - n.reserved_cpu
        for k in range(1, len(lower) + 1):
            if any(free + sum(combo) >= cpu for combo in itertools.combinations(lower, k)):
                best = k if best is None else min(best, k)
                break
    got = preempt.make_room(s, "urgent", w, NOW, TTL, ())
    if best is None:
        assert isinstance(got, str)
        return
    assert not isinstance(got, str)
    placed_job, room = got
    assert len(room.victims) == best
    prio = {j: p for (j, _, _, p) in placed}
    assert all(prio[v.job_id] < priority for v in room.victims)
    w.decide_locally(urgent(placed_job, s))
    preempt.replace_victims(room, w, NOW, TTL)
    _no_overbooking(w)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([2, 4, 6]), st.sampled_from("abcd")), min_size=1, max_size=10),
    st.integers(1, 9),
    st.sampled_from(["best_fit", "spread", "first_fit", "pack"]),
    st.booleans(),
)
def test_spread_by_never_exceeds_skew_one_when_it_places(
    nodes: list[tuple[int, str]], replicas: int, strategy: str, exclusive: bool
) -> None:
    w = World()
    for i, (cpu, zone) in enumerate(nodes):
        node(w, f"n{i}", cpu, zone)
    s = spec(replicas, strategy=strategy, spread_by="zone", spread=exclusive)
    got = place(s, w, NOW, TTL)
    if isinstance(got, NotPlaced):
        return
    zone_of = {f"n{i}": z for i, (_, z) in enumerate(nodes)}
    domains = {z for (cpu, z) in nodes if cpu >= 2}
    counts = {z: 0 for z in domains}
    for a in got.assignments:
        counts[zone_of[a.node_id or ""]] += 1
    assert max(counts.values()) - min(counts.values()) <= 1
    used: dict[str, int] = {}
    for a in got.assignments:
        used[a.node_id or ""] = used.get(a.node_id or "", 0) + 2
    assert all(used[n] <= cpu for n, cpu in ((f"n{i}", c) for i, (c, _) in enumerate(nodes)) if n in used)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-60, 60), st.floats(-180, 180)), min_size=1, max_size=15),
    st.tuples(st.floats(-60, 60), st.floats(-180, 180)),
    st.floats(1, 3000),
    st.sampled_from(["best_fit", "nearest", "first_fit", "pack"]),
)
def test_near_never_returns_a_node_outside_the_radius(
    where: list[tuple[float, float]], centre: tuple[float, float], radius: float, strategy: str
) -> None:
    w = World()
    for i, at in enumerate(where):
        node(w, f"n{i}", 4, None, at)
    near = Near(lat=centre[0], lon=centre[1], max_km=radius)
    got = place(spec(1, strategy=strategy, near=near), w, NOW, TTL)
    inside = {
        f"n{i}" for i, (lat, lon) in enumerate(where) if geo.distance_km(centre[0], centre[1], lat, lon) <= radius
    }
    if not inside:
        assert isinstance(got, NotPlaced)
        return
    assert isinstance(got, Placed)
    assert {c.node_id for c in got.candidates} <= inside
    assert len(got.candidates) == min(10, len(inside))  # no node inside is missed
    if strategy == "nearest":
        ds = [c.distance_km or 0 for c in got.candidates]
        assert ds == sorted(ds)


# --- through the decider: one chain, victims first, undone together ------------------
class _Stream:
    """PLACEMENTS in memory: refuses the first ``refuse`` chains whole (as an atomic batch
    refused for a wrong last sequence), stores the others; the ledger applies each at once."""

    def __init__(self, ledger: Any, refuse: int = 0) -> None:
        self.ledger = ledger
        self.refuse = refuse
        self.stored: list[ev.Event] = []

    async def publish_chain(
        self, events: Any, expected_last_seq: int, *, atomic: bool = False, msg_ids: Any = None
    ) -> list[Any]:
        from services.runtime.publisher import Ack, WrongLastSequence

        if self.refuse:
            self.refuse -= 1
            return [WrongLastSequence(400, 10071, f"wrong last sequence: {len(self.stored)}")] * len(events)
        out = []
        for e in events:
            self.stored.append(e)
            self.ledger.apply(len(self.stored), ev.encode(e))
            out.append(Ack(stream="PLACEMENTS", seq=len(self.stored)))
        return out

    async def last_seq(self) -> int:
        return len(self.stored)


class _Clock:
    def monotonic(self) -> float:
        return NOW

    def wall(self) -> datetime:
        return T0


@pytest.mark.parametrize("refusals", [0, 1])
async def test_the_decider_stores_victims_before_the_preemptor_and_undoes_a_refused_chain(refusals: int) -> None:
    import asyncio

    from services.placement.decider import Decider, Pending
    from services.placement.ledger import Ledger

    w = full_world()
    ledger = Ledger(w, asyncio.Event())
    stream = _Stream(ledger, refuse=refusals)
    decider = Decider(w, ledger, stream, _Clock(), ttl=TTL, top_candidates=10, instance_types=[])
    before = {j: (r.revision, r.node_ids) for j, r in w.reservations.items()}
    stop = asyncio.Event()
    task = asyncio.create_task(decider.run(stop))
    s = spec(1, cpu=2, priority=10)
    accepted = ev.JobAccepted(event_id="urgent:accepted", job_id="urgent", spec=s)

    class _Delivery:
        pass

    outcome = await decider.decide(Pending(accepted, _Delivery(), NOW + 30, 1))  # type: ignore[arg-type]
    stop.set()
    await task
    assert outcome == "decided"
    kinds = [(type(e).__name__, e.job_id) for e in stream.stored]  # type: ignore[attr-defined]
    assert kinds == [
        ("PlacementDecided", "low-a2"),
        ("PlacementDegraded", "low-a2"),
        ("PlacementDecided", "urgent"),
    ]
    final = stream.stored[-1]
    assert isinstance(final, ev.PlacementDecided)
    assert final.preempted == [ev.Preempted(job_id="low-a2", replica=0, node_id="a")]
    assert w.reservations["urgent"].node_ids == ("a",)
    assert "low-a2" not in w.holders.get("a", {})
    for j, (rev, nodes) in before.items():  # nothing else moved, refused or not
        if j != "low-a2":
            assert (w.reservations[j].revision, w.reservations[j].node_ids) == (rev, nodes)
    _no_overbooking(w)
