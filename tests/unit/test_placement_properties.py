"""Property tests of the placement engine (hypothesis).

Random fleets (states, staleness, technologies, labels, gpus, reported free below
allocatable, reservations) and random jobs. Checked: a decision never exceeds any
node's free resources and never uses an inactive node; the same input gives the same
decision, whatever order the statuses arrived in; and the indexed engine decides
exactly what a plain scan of the rules in ARCHITECTURE.md section 3 decides.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import NodeStatus
from schemas.jobs import Constraints, JobSpec, Resources, Workload
from services.placement.engine import KEYS, NotPlaced, Placed, census, first_failed, place
from services.placement.state import World

NOW = 1000.0
TTL = 15.0
TECHS = ("docker", "wasm")
ZONES = ("a", "b")


@st.composite
def node_inputs(draw: st.DrawFn, i: int) -> tuple[NodeStatus, float]:
    cores = draw(st.sampled_from([1.0, 2.0, 4.0, 8.0]))
    mem = draw(st.sampled_from([1024, 2048, 4096]))
    status = NodeStatus(
        node_id=f"n{i:02d}",
        state=draw(st.sampled_from(["active", "active", "active", "draining", "down"])),
        technologies=draw(st.lists(st.sampled_from(TECHS), min_size=1, max_size=2, unique=True)),
        cpu_cores=cores,
        cpu_free=draw(st.sampled_from([cores, cores, cores / 2, 0.0])),
        memory_mb=mem,
        memory_free_mb=draw(st.sampled_from([mem, mem, mem // 2])),
        gpus=draw(st.sampled_from([0, 0, 1, 2])),
        labels={"zone": draw(st.sampled_from(ZONES))},
    )
    age = draw(st.sampled_from([0.5, 1.0, 5.0, TTL + 1]))
    return status, NOW - age


@st.composite
def fleets(draw: st.DrawFn) -> list[tuple[NodeStatus, float]]:
    n = draw(st.integers(min_value=0, max_value=12))
    return [draw(node_inputs(i)) for i in range(n)]


@st.composite
def jobs(draw: st.DrawFn) -> JobSpec:
    return JobSpec(
        name="p",
        technology=draw(st.sampled_from(TECHS)),
        replicas=draw(st.integers(min_value=1, max_value=6)),
        resources=Resources(
            cpu=draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0])),
            memory_mb=draw(st.sampled_from([256, 512, 1024, 2048])),
            gpu=draw(st.sampled_from([0, 0, 0, 1])),
        ),
        constraints=Constraints(
            labels=draw(st.sampled_from([{}, {}, {"zone": "a"}])),
            nodes=draw(st.sampled_from([[], [], ["n00", "n01", "n03", "nX"]])),
            spread=draw(st.booleans()),
        ),
        cluster="shared",
        workload=Workload(),
        strategy=draw(st.sampled_from(["best_fit", "spread", "first_fit", "pack"])),
    )


Reservations = list[tuple[int, float, int]]
reservations = st.lists(
    st.tuples(st.integers(0, 11), st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from([0, 256, 1024])), max_size=5
)


def build(fleet: list[tuple[NodeStatus, float]], held: Reservations, order: list[int] | None = None) -> World:
    w = World()
    for k, (node, cpu, mem) in enumerate(held):  # some reservations arrive before their node
        if k % 2:
            w.reserve(f"r{k}", Resources(cpu=cpu, memory_mb=mem), (f"n{node:02d}",))
    for i in order if order is not None else range(len(fleet)):
        status, seen = fleet[i]
        w.update_node(status, seen)
    for k, (node, cpu, mem) in enumerate(held):
        if not k % 2:
            w.reserve(f"r{k}", Resources(cpu=cpu, memory_mb=mem), (f"n{node:02d}",))
    return w


def reference(spec: JobSpec, w: World) -> list[str] | None:
    """The rules read literally: filter every node, then pick each replica by a full re-rank."""
    allowed = frozenset(spec.constraints.nodes) if spec.constraints.nodes else None
    free = {
        n.node_id: (n.cpu, n.memory, n.gpu)
        for n in w.nodes.values()
        if first_failed(n, spec, NOW, TTL, allowed) is None
    }
    r, key, counts, out = spec.resources, KEYS[spec.strategy], Counter[str](), []
    for _ in range(spec.replicas):
        fit = [
            nid
            for nid, (c, m, g) in free.items()
            if c >= r.cpu and m >= r.memory_mb and g >= r.gpu and not (spec.constraints.spread and counts[nid])
        ]
        if not fit:
            return None
        nid = min(fit, key=lambda nid: key(nid, free[nid][0], free[nid][1], counts[nid]))
        c, m, g = free[nid]
        free[nid] = (round(c - r.cpu, 6), m - r.memory_mb, g - r.gpu)
        counts[nid] += 1
        out.append(nid)
    return out


@settings(max_examples=150, deadline=None)
@given(fleets(), reservations, jobs())
def test_decision_fits_free_resources_of_active_nodes_only(
    fleet: list[tuple[NodeStatus, float]], held: Reservations, spec: JobSpec
) -> None:
    w = build(fleet, held)
    before = {nid: (n.cpu, n.memory, n.gpu, n.active(NOW, TTL)) for nid, n in w.nodes.items()}
    r = place(spec, w, NOW, TTL)
    if isinstance(r, NotPlaced):
        _, qualified = census(spec, w, NOW, TTL)
        filters = ("inactive", "technology", "cpu", "memory", "gpu", "labels", "nodes")
        assert sum(getattr(r.excluded, f) for f in filters) + qualified == r.nodes_total == len(w.nodes)
        assert r.excluded.spread in (0, qualified)
        return
    used = Counter(a.node_id for a in r.assignments)
    assert [a.replica for a in r.assignments] == list(range(spec.replicas))
    for nid, n in used.items():
        assert nid is not None
        cpu, mem, gpu, active = before[nid]
        assert active
        assert n * spec.resources.cpu <= cpu + 1e-9
        assert n * spec.resources.memory_mb <= mem
        assert n * spec.resources.gpu <= gpu
        if spec.constraints.spread:
            assert n == 1
    assert len(r.candidates) <= 10


@settings(max_examples=150, deadline=None)
@given(fleets(), reservations, jobs(), st.randoms(use_true_random=False))
def test_same_input_same_decision_and_same_as_a_plain_scan(
    fleet: list[tuple[NodeStatus, float]], held: Reservations, spec: JobSpec, rnd: object
) -> None:
    order = list(range(len(fleet)))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    a = place(spec, build(fleet, held), NOW, TTL)
    b = place(spec, build(fleet, held, order), NOW, TTL)
    assert a == b
    expected = reference(spec, build(fleet, held))
    if expected is None:
        assert isinstance(a, NotPlaced)
    else:
        assert isinstance(a, Placed)
        assert [x.node_id for x in a.assignments] == expected


@settings(max_examples=100, deadline=None)
@given(fleets(), jobs(), st.lists(st.tuples(st.integers(0, 11), st.sampled_from([0.0, 1.0, 4.0])), max_size=20))
def test_index_follows_status_updates(
    fleet: list[tuple[NodeStatus, float]], spec: JobSpec, updates: list[tuple[int, float]]
) -> None:
    """After arbitrary later statuses the index still agrees with a plain scan."""
    w = build(fleet, [])
    latest = {st.node_id: (st, seen) for st, seen in fleet}
    for i, cpu in updates:
        if i < len(fleet):
            st0 = fleet[i][0]
            new = NodeStatus(**{**{f: getattr(st0, f) for f in st0.__struct_fields__}, "cpu_free": cpu})
            w.update_node(new, NOW - 0.1)
            latest[st0.node_id] = (new, NOW - 0.1)
    fresh = World()
    for st1, seen in sorted(latest.values(), key=lambda x: x[1]):
        fresh.update_node(st1, seen)
    assert place(spec, w, NOW, TTL) == place(spec, fresh, NOW, TTL)
    expected = reference(spec, fresh)
    r = place(spec, w, NOW, TTL)
    assert (r.assignments[0].node_id if isinstance(r, Placed) else None) == (expected[0] if expected else None)
