"""The placement rule, checked by hand on small fleets: every filter and every strategy."""

from __future__ import annotations

import msgspec
import pytest

from schemas.events import NodeStatus
from schemas.jobs import Defaults, JobSpec, Resources, decode_job_request, normalise
from services.placement.engine import NotPlaced, Placed, place, place_dedicated
from services.placement.state import World
from services.runtime.config import load_config

NOW = 1000.0
TTL = 15.0


def spec(raw: str) -> JobSpec:
    return normalise(decode_job_request(raw.encode()), Defaults())


def status(
    node_id: str,
    cpu: float,
    mem: int,
    *,
    state: str = "active",
    techs: tuple[str, ...] = ("docker",),
    gpus: int = 0,
    labels: dict[str, str] | None = None,
    cores: float | None = None,
) -> NodeStatus:
    return NodeStatus(
        node_id=node_id,
        state=state,  # type: ignore[arg-type]
        technologies=list(techs),
        cpu_cores=cores if cores is not None else cpu,
        cpu_free=cpu,
        memory_mb=mem,
        memory_free_mb=mem,
        gpus=gpus,
        labels=labels or {},
    )


def world(*statuses: NodeStatus, stale: tuple[str, ...] = ()) -> World:
    w = World()
    for st in sorted(statuses, key=lambda st: st.node_id in stale, reverse=True):  # arrival in clock order
        w.update_node(st, NOW - (TTL + 1 if st.node_id in stale else 1))
    return w


def decide(w: World, raw: str) -> Placed | NotPlaced:
    return place(spec(raw), w, NOW, TTL)


def nodes_of(r: Placed | NotPlaced) -> list[str | None]:
    assert isinstance(r, Placed), r
    return [a.node_id for a in r.assignments]


FLEET = world(
    status("a", 4.0, 8000),
    status("b", 8.0, 4000),
    status("c", 8.0, 9000),
    status("d", 16.0, 60000, state="down"),
    status("e", 16.0, 60000, techs=("unikernel",)),
    status("f", 0.5, 60000),
    status("g", 16.0, 60000),
    status("h", 12.0, 2000, labels={"zone": "b"}),
    status("i", 6.0, 16000, gpus=2, labels={"zone": "a"}),
    stale=("g",),
)


# --- filters: each one decides where a single replica can go --------------------------
PLACED_BY_FILTER = [
    # best_fit would pick g (stale), d (down), e (no docker), then h (12 cpu) unless a filter says no
    ('{"name": "j", "resources": {"cpu": 1, "memory_mb": 100}}', "h"),
    ('{"name": "j", "resources": {"cpu": 1, "memory_mb": 10000}}', "i"),  # memory: only i has 16000
    ('{"name": "j", "resources": {"cpu": 10, "memory_mb": 100}}', "h"),  # cpu: only h has >= 10
    ('{"name": "j", "resources": {"cpu": 1, "memory_mb": 100, "gpu": 1}}', "i"),  # gpu
    ('{"name": "j", "resources": {"cpu": 1, "memory_mb": 100}, "constraints": {"labels": {"zone": "a"}}}', "i"),
    ('{"name": "j", "resources": {"cpu": 1, "memory_mb": 100}, "constraints": {"nodes": ["a", "b", "g"]}}', "b"),
    ('{"name": "j", "technology": "unikernel", "resources": {"cpu": 1, "memory_mb": 100}}', "e"),
]


@pytest.mark.parametrize(("raw", "where"), PLACED_BY_FILTER)
def test_each_filter_decides_where_the_replica_goes(raw: str, where: str) -> None:
    assert nodes_of(decide(FLEET, raw)) == [where]


def msgspec_to_dict(x: object) -> dict[str, int]:
    return {k: int(v) for k, v in msgspec.structs.asdict(x).items()}  # type: ignore[arg-type]


EXPLAINED = [
    (
        '{"name": "j", "resources": {"cpu": 20}}',
        "0/9 nodes available: 2 inactive, 1 lack technology docker, 6 insufficient cpu",
    ),
    (
        '{"name": "j", "resources": {"cpu": 1, "memory_mb": 100000}}',
        "0/9 nodes available: 2 inactive, 1 lack technology docker, 1 insufficient cpu, 5 insufficient memory",
    ),
    (
        '{"name": "j", "resources": {"cpu": 1, "memory_mb": 100, "gpu": 4}}',
        "0/9 nodes available: 2 inactive, 1 lack technology docker, 1 insufficient cpu, 5 insufficient gpu",
    ),
    (
        '{"name": "j", "resources": {"cpu": 1, "memory_mb": 100}, "constraints": {"labels": {"zone": "z"}}}',
        "0/9 nodes available: 2 inactive, 1 lack technology docker, 1 insufficient cpu, 5 labels do not match",
    ),
    (
        '{"name": "j", "resources": {"cpu": 1, "memory_mb": 100}, "constraints": {"nodes": ["d", "e", "f"]}}',
        "0/9 nodes available: 2 inactive, 1 lack technology docker, 1 insufficient cpu, 5 not in constraints.nodes",
    ),
    (
        '{"name": "j", "technology": "unikernel", "resources": {"cpu": 1, "memory_mb": 100}, '
        '"constraints": {"labels": {"zone": "a"}}}',
        "0/9 nodes available: 2 inactive, 6 lack technology unikernel, 1 labels do not match",
    ),
]


@pytest.mark.parametrize(("raw", "reason"), EXPLAINED)
def test_failure_is_explained_kube_style(raw: str, reason: str) -> None:
    r = decide(FLEET, raw)
    assert isinstance(r, NotPlaced)
    assert r.reason == reason
    counts = {k: v for k, v in msgspec_to_dict(r.excluded).items() if v}
    words = {"lack": "technology", "not": "nodes", "labels": "labels"}
    said = {
        words.get(part.split()[1], part.split()[-1]): int(part.split()[0]) for part in reason.split(": ")[1].split(", ")
    }
    assert counts == said
    assert sum(msgspec_to_dict(r.excluded).values()) == r.nodes_total == 9


def test_explanation_counts_are_omitted_for_a_quiet_retry() -> None:
    r = place(spec('{"name": "j", "resources": {"cpu": 20}}'), FLEET, NOW, TTL, explain_failure=False)
    assert isinstance(r, NotPlaced) and r.excluded.cpu == 0 and r.nodes_total == 9


# --- strategies: hand-computed candidate lists and assignments ------------------------
STRATEGY_FLEET = world(
    status("n1", 4.0, 8000),
    status("n2", 8.0, 4000),
    status("n3", 8.0, 9000),
    status("n4", 2.0, 3000),
    status("n5", 8.0, 9000),
    status("n6", 1.0, 500),  # too small for the job: never a candidate
)
JOB = '{{"name": "j", "replicas": {n}, "strategy": "{s}", "resources": {{"cpu": 2, "memory_mb": 2000}}{extra}}}'

STRATEGIES = [
    # best_fit: most free cpu, then memory, then id; after each replica the node is re-ranked
    ("best_fit", 3, "", ["n3", "n5", "n2", "n1", "n4"], ["n3", "n5", "n2"]),
    ("best_fit", 5, "", ["n3", "n5", "n2", "n1", "n4"], ["n3", "n5", "n2", "n3", "n5"]),
    # spread: fewest replicas of this job first, then as best_fit
    ("spread", 6, "", ["n3", "n5", "n2", "n1", "n4"], ["n3", "n5", "n2", "n1", "n4", "n3"]),
    # first_fit: lowest node id that still fits
    ("first_fit", 4, "", ["n1", "n2", "n3", "n4", "n5"], ["n1", "n1", "n2", "n2"]),
    # pack: least free cpu then memory that still fits
    ("pack", 4, "", ["n4", "n1", "n2", "n3", "n5"], ["n4", "n1", "n1", "n2"]),
    # constraints.spread: never two replicas on one node, whatever the strategy
    ("pack", 4, ', "constraints": {"spread": true}', ["n4", "n1", "n2", "n3", "n5"], ["n4", "n1", "n2", "n3"]),
    ("first_fit", 3, ', "constraints": {"spread": true}', ["n1", "n2", "n3", "n4", "n5"], ["n1", "n2", "n3"]),
]


@pytest.mark.parametrize(("strategy", "replicas", "extra", "candidates", "assigned"), STRATEGIES)
def test_strategy_ranks_and_assigns(
    strategy: str, replicas: int, extra: str, candidates: list[str], assigned: list[str]
) -> None:
    r = decide(STRATEGY_FLEET, JOB.format(n=replicas, s=strategy, extra=extra))
    assert isinstance(r, Placed)
    assert [c.node_id for c in r.candidates] == candidates
    assert nodes_of(r) == assigned
    assert [a.replica for a in r.assignments] == list(range(replicas))


def test_candidates_are_capped_and_show_free_before_this_job() -> None:
    r = place(spec(JOB.format(n=2, s="best_fit", extra="")), STRATEGY_FLEET, NOW, TTL, top_n=2)
    assert isinstance(r, Placed)
    assert [(c.node_id, c.cpu_free, c.memory_free_mb) for c in r.candidates] == [("n3", 8.0, 9000), ("n5", 8.0, 9000)]


def test_spread_constraint_failure_is_whole_or_nothing_and_explained() -> None:
    r = decide(STRATEGY_FLEET, JOB.format(n=6, s="best_fit", extra=', "constraints": {"spread": true}'))
    assert isinstance(r, NotPlaced)
    assert r.excluded.cpu == 1 and r.excluded.spread == 5
    assert r.reason.endswith("5 qualify for one replica but only 5 of 6 replicas fit")


def test_job_is_placed_whole_or_not_at_all() -> None:
    w = world(status("a", 2.0, 8000))
    assert isinstance(decide(w, '{"name": "j", "replicas": 3, "resources": {"cpu": 1}}'), NotPlaced)
    assert not w.reservations


def test_ties_break_by_node_id() -> None:
    w = world(status("z", 8.0, 8000), status("y", 8.0, 8000), status("x", 8.0, 8000))
    for strategy in ("best_fit", "spread", "pack", "first_fit"):
        r = decide(w, f'{{"name": "j", "strategy": "{strategy}"}}')
        assert nodes_of(r) == ["x"], strategy


# --- reservations and node lifecycle --------------------------------------------------
def test_reservations_reduce_free_capacity_and_are_released_once() -> None:
    w = world(status("a", 8.0, 8000), status("b", 6.0, 8000))
    s = spec('{"name": "j", "resources": {"cpu": 4, "memory_mb": 1000}}')
    assert nodes_of(place(s, w, NOW, TTL)) == ["a"]
    w.reserve("j1", s.resources, ("a",))
    assert nodes_of(place(s, w, NOW, TTL)) == ["b"]
    w.reserve("j2", s.resources, ("b",))
    assert nodes_of(place(s, w, NOW, TTL)) == ["a"]  # a: 4 free, b: 2 free
    w.reserve("j3", s.resources, ("a",))
    assert isinstance(place(s, w, NOW, TTL), NotPlaced)
    assert w.release("j1") and not w.release("j1")
    assert not w.reserve("j1", s.resources, ("a",))  # a released job is never reserved again
    assert nodes_of(place(s, w, NOW, TTL)) == ["a"]


def test_free_is_the_smaller_of_allocatable_minus_reserved_and_reported() -> None:
    w = world(status("a", 6.0, 8000, cores=8.0))
    w.reserve("j1", Resources(cpu=1.0, memory_mb=0), ("a",))
    assert w.nodes["a"].cpu == 6.0  # reported 6 < 8 - 1
    w.reserve("j2", Resources(cpu=2.5, memory_mb=0), ("a",))
    assert w.nodes["a"].cpu == 4.5  # 8 - 3.5 < reported 6
    w.release("j2")
    w.release("j1")
    assert w.nodes["a"].cpu == 6.0


def test_fractional_reservations_leave_no_dust() -> None:
    w = world(status("a", 1.0, 8000))
    for i in range(10):
        w.reserve(f"j{i}", Resources(cpu=0.1, memory_mb=1), ("a",))
    assert w.nodes["a"].cpu == 0.0
    for i in range(10):
        w.release(f"j{i}")
    assert w.nodes["a"].cpu == 1.0


def test_stale_node_keeps_reservations_but_gets_no_new_work_until_heard_again() -> None:
    w = world(status("a", 8.0, 8000), status("b", 4.0, 8000))
    w.reserve("j1", Resources(cpu=2.0, memory_mb=1000), ("a",))
    later = NOW + TTL
    w.update_node(status("b", 4.0, 8000), later)  # only b keeps talking
    r = place(spec('{"name": "j"}'), w, later, TTL)
    assert nodes_of(r) == ["b"]
    assert w.nodes["a"].reserved_cpu == 2.0
    w.update_node(status("a", 8.0, 8000), later)
    assert nodes_of(place(spec('{"name": "j"}'), w, later, TTL)) == ["a"]  # 6 free > 4
    assert w.nodes["a"].cpu == 6.0


def test_node_that_goes_down_or_changes_technology_leaves_the_index() -> None:
    w = world(status("a", 8.0, 8000), status("b", 4.0, 8000))
    w.update_node(status("a", 8.0, 8000, state="draining"), NOW)
    assert nodes_of(decide(w, '{"name": "j"}')) == ["b"]
    w.update_node(status("a", 8.0, 8000, techs=("vm",)), NOW)
    w.update_node(status("b", 4.0, 8000, techs=("docker", "vm")), NOW)
    assert nodes_of(decide(w, '{"name": "j"}')) == ["b"]
    assert nodes_of(decide(w, '{"name": "j", "technology": "vm"}')) == ["a"]


def test_reservation_before_the_node_is_known_applies_when_it_appears() -> None:
    w = World()
    w.reserve("j1", Resources(cpu=3.0, memory_mb=1000), ("a",))
    w.update_node(status("a", 4.0, 8000), NOW)
    assert w.nodes["a"].cpu == 1.0
    assert isinstance(decide(w, '{"name": "j", "resources": {"cpu": 2}}'), NotPlaced)


def test_dedicated_ranks_cheapest_instance_type_that_fits() -> None:
    catalogue = load_config().instance_types
    r = place_dedicated(
        spec('{"name": "j", "cluster": "dedicated", "replicas": 2, "resources": {"cpu": 3, "memory_mb": 8000}}'),
        catalogue,
    )
    assert isinstance(r, Placed)
    assert [a.instance_type for a in r.assignments] == ["c5.xlarge", "c5.xlarge"]
    assert [c.instance_type for c in r.candidates] == [
        "c5.xlarge",
        "m5.xlarge",
        "m5.2xlarge",
        "r5.2xlarge",
        "g4dn.xlarge",
        "m5.8xlarge",
    ]


def test_dedicated_without_a_fitting_type_says_what_was_asked() -> None:
    r = place_dedicated(
        spec('{"name": "j", "cluster": "dedicated", "resources": {"cpu": 64}}'), load_config().instance_types
    )
    assert isinstance(r, NotPlaced)
    assert r.reason == "0/8 instance types offer 64 cpu, 1024 MiB, 0 gpu"
