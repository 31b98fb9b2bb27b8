"""The placement rule, checked by hand on small fleets."""

from __future__ import annotations

from schemas.events import NodeStatus
from schemas.jobs import Defaults, JobSpec, decode_job_request, normalise
from services.placement.engine import NotPlaced, Placed, place, place_dedicated
from services.placement.state import World
from services.runtime.config import load_config

NOW = 1000.0
TTL = 15.0


def spec(raw: str) -> JobSpec:
    return normalise(decode_job_request(raw.encode()), Defaults())


def world(*nodes: tuple[str, str, tuple[str, ...], float, int], stale: tuple[str, ...] = ()) -> World:
    w = World()
    for node_id, state, techs, cpu_free, mem_free in nodes:
        st = NodeStatus(
            node_id=node_id,
            state=state,
            technologies=list(techs),
            cpu_cores=cpu_free,  # type: ignore[arg-type]
            cpu_free=cpu_free,
            memory_mb=mem_free,
            memory_free_mb=mem_free,
        )
        w.update_node(st, NOW - (TTL + 1 if node_id in stale else 1))
    return w


FLEET = world(
    ("a", "active", ("docker",), 4.0, 8000),
    ("b", "active", ("docker",), 8.0, 4000),
    ("c", "active", ("docker",), 8.0, 9000),
    ("d", "down", ("docker",), 16.0, 60000),
    ("e", "active", ("unikernel",), 16.0, 60000),
    ("f", "active", ("docker",), 0.5, 60000),
    ("g", "active", ("docker",), 16.0, 60000),
    stale=("g",),
)


def test_best_fit_ranks_most_free_cpu_then_memory() -> None:
    r = place(
        spec('{"name": "j", "replicas": 2, "resources": {"cpu": 1, "memory_mb": 1000}}'), FLEET.nodes.values(), NOW, TTL
    )
    assert isinstance(r, Placed)
    assert [c.node_id for c in r.candidates] == ["c", "b", "a"]
    # replica 0 on c (8 cpu, 9000); then c has 7 cpu left, b has 8: replica 1 on b
    assert [(a.replica, a.node_id) for a in r.assignments] == [(0, "c"), (1, "b")]


def test_explanation_counts_each_node_under_its_first_failed_filter() -> None:
    r = place(spec('{"name": "j", "resources": {"cpu": 6, "memory_mb": 5000}}'), FLEET.nodes.values(), NOW, TTL)
    assert isinstance(r, Placed)
    assert [a.node_id for a in r.assignments] == ["c"]
    r = place(spec('{"name": "j", "resources": {"cpu": 20}}'), FLEET.nodes.values(), NOW, TTL)
    assert isinstance(r, NotPlaced)
    assert (r.excluded.inactive, r.excluded.technology, r.excluded.cpu) == (2, 1, 4)
    assert r.reason == "0/7 nodes available: 2 inactive, 1 lack technology docker, 4 insufficient cpu"


def test_reservations_reduce_free_capacity() -> None:
    w = world(("a", "active", ("docker",), 8.0, 8000), ("b", "active", ("docker",), 6.0, 8000))
    s = spec('{"name": "j", "resources": {"cpu": 4, "memory_mb": 1000}}')
    first = place(s, w.nodes.values(), NOW, TTL)
    assert isinstance(first, Placed) and first.assignments[0].node_id == "a"
    w.reserve("j1", s.resources, ("a",))
    second = place(s, w.nodes.values(), NOW, TTL)
    assert isinstance(second, Placed) and second.assignments[0].node_id == "b"
    w.reserve("j2", s.resources, ("b",))
    third = place(s, w.nodes.values(), NOW, TTL)  # a: 4 free, b: 2 free
    assert isinstance(third, Placed) and third.assignments[0].node_id == "a"
    w.reserve("j3", s.resources, ("a",))
    assert isinstance(place(s, w.nodes.values(), NOW, TTL), NotPlaced)
    assert w.release("j1") and not w.release("j1")  # released exactly once
    assert isinstance(place(s, w.nodes.values(), NOW, TTL), Placed)


def test_ties_break_by_node_id() -> None:
    w = world(("z", "active", ("docker",), 8.0, 8000), ("y", "active", ("docker",), 8.0, 8000))
    r = place(spec('{"name": "j"}'), w.nodes.values(), NOW, TTL)
    assert isinstance(r, Placed) and r.assignments[0].node_id == "y"


def test_job_is_placed_whole_or_not_at_all() -> None:
    w = world(("a", "active", ("docker",), 2.0, 8000))
    r = place(spec('{"name": "j", "replicas": 3, "resources": {"cpu": 1}}'), w.nodes.values(), NOW, TTL)
    assert isinstance(r, NotPlaced)


def test_dedicated_ranks_cheapest_instance_type_that_fits() -> None:
    catalogue = load_config().instance_types
    r = place_dedicated(
        spec('{"name": "j", "cluster": "dedicated", "replicas": 2, "resources": {"cpu": 3, "memory_mb": 8000}}'),
        catalogue,
    )
    assert isinstance(r, Placed)
    assert [a.instance_type for a in r.assignments] == ["c5.xlarge", "c5.xlarge"]
    assert r.candidates[0].instance_type == "c5.xlarge"
    prices = [c.price_hourly or 0 for c in r.candidates]
    assert prices == sorted(prices)
