"""Qualified nodes in a strategy's order: the filters, and the walks of the index that yield
the nodes passing them, best first. Pure, over the node table.

- one technology bucket (best_fit, spread: most free first; pack: least free first; first_fit:
  by id), or one of its per-label sub-buckets (``constraints.spread_by``);
- ``constraints.near``: the grid cells that can hold nodes within ``max_km``, merged in the
  strategy's order, or for ``nearest`` visited closest first (``geo.lower_bound_km``), each
  node's exact distance recorded in ``dist``;
- ``constraints.nodes``: just those nodes, filtered and sorted.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator

from schemas.jobs import JobSpec
from services.placement import geo
from services.placement.table import Bucket, Node, NodeTable

SortKey = Callable[[str, float, int, int], tuple[float | int | str, ...]]
"""(node_id, cpu_free, memory_free_mb, replicas_of_this_job_on_node) -> sort key, smallest first."""

KEYS: dict[str, SortKey] = {
    "best_fit": lambda nid, cpu, mem, n: (-cpu, -mem, nid),
    "spread": lambda nid, cpu, mem, n: (n, -cpu, -mem, nid),
    "first_fit": lambda nid, cpu, mem, n: (nid,),
    "pack": lambda nid, cpu, mem, n: (cpu, mem, nid),
    "nearest": lambda nid, cpu, mem, n: (-cpu, -mem, nid),  # without ``near``: as best_fit
}


def sort_key(spec: JobSpec, dist: dict[str, float]) -> SortKey:
    """The job's ranking key; ``nearest`` (with ``near``): distance, then as best_fit."""
    if spec.strategy == "nearest" and spec.constraints.near is not None:
        return lambda nid, cpu, mem, n: (dist[nid], -cpu, -mem, nid)
    return KEYS[spec.strategy]


def distance_of(node: Node, spec: JobSpec) -> float | None:
    """Great-circle km from the job's ``near`` point; None without a location."""
    near = spec.constraints.near
    loc = node.status.location
    if near is None or loc is None:
        return None
    return geo.distance_km(near.lat, near.lon, loc.lat, loc.lon)


def first_failed(node: Node, spec: JobSpec, now: float, ttl: float, allowed: frozenset[str] | None) -> str | None:
    """The first filter ``node`` fails for ``spec`` (a key of ``Excluded``), or None."""
    st = node.status
    r = spec.resources
    c = spec.constraints
    if not node.active(now, ttl):
        return "inactive"
    if spec.technology not in st.technologies:
        return "technology"
    if node.cpu < r.cpu:
        return "cpu"
    if node.memory < r.memory_mb:
        return "memory"
    if node.gpu < r.gpu:
        return "gpu"
    labels = c.labels
    if labels and any(st.labels.get(k) != v for k, v in labels.items()):
        return "labels"
    if allowed is not None and st.node_id not in allowed:
        return "nodes"
    if c.near is not None:
        d = distance_of(node, spec)
        if d is None or d > c.near.max_km:
            return "distance"
    if c.spread_by is not None and c.spread_by not in st.labels:
        return "spread_by"
    return None


def least_free_first(keys: Iterator[tuple[float, int, str]]) -> Iterator[tuple[float, int, str]]:
    """Re-order ``by_free`` keys read backwards (least free first) so equal (cpu, memory) runs
    come in node_id ascending order, as every tie is broken."""
    run: list[tuple[float, int, str]] = []
    for k in keys:
        if run and (k[0] != run[0][0] or k[1] != run[0][1]):
            yield from reversed(run)
            run.clear()
        run.append(k)
    yield from reversed(run)


def _has(node: Node, labels: dict[str, str], key: str | None) -> bool:
    lab = node.status.labels
    return (not labels or all(lab.get(k) == v for k, v in labels.items())) and (key is None or key in lab)


def ranked(
    spec: JobSpec, world: NodeTable, now: float, ttl: float, dist: dict[str, float], bucket: Bucket | None = None
) -> Iterator[Node]:
    """Nodes passing every filter, best first for ``spec.strategy`` (spread: as best_fit).
    ``bucket``: walk that (sub-)bucket instead of the technology's."""
    nodes = world.nodes
    c = spec.constraints
    if c.nodes:  # a short list named by the job: rank just those
        allowed = frozenset(c.nodes)
        ok = [nodes[n] for n in allowed if n in nodes and first_failed(nodes[n], spec, now, ttl, allowed) is None]
        if bucket is not None:
            ok = [n for n in ok if n.key is not None and n.key in bucket.by_free]
        for n in ok:
            d = distance_of(n, spec)
            if d is not None:
                dist[n.node_id] = d
        key = sort_key(spec, dist)
        yield from sorted(ok, key=lambda n: key(n.node_id, n.cpu, n.memory, 0))
        return
    if c.near is not None and bucket is None:
        yield from _near(spec, world, now, ttl, dist)
        return
    if bucket is None:
        bucket = world.bucket(spec.technology, spec.resources.gpu > 0)
        if bucket is None:
            return
    yield from _walk(spec, world, now, ttl, dist, [bucket])


def _walk(
    spec: JobSpec, world: NodeTable, now: float, ttl: float, dist: dict[str, float], buckets: list[Bucket]
) -> Iterator[Node]:
    """Merge ``buckets`` in the strategy's order (not ``nearest``), checking what the index does not."""
    r = spec.resources
    nodes = world.nodes
    labels, by, near = spec.constraints.labels, spec.constraints.spread_by, spec.constraints.near
    cpu, mem, gpu = r.cpu, r.memory_mb, r.gpu
    if spec.strategy == "first_fit":
        ids: Iterable[str] = buckets[0].by_id if len(buckets) == 1 else heapq.merge(*(b.by_id for b in buckets))
        for nid in ids:
            node = nodes[nid]
            if (
                node.cpu >= cpu
                and node.memory >= mem
                and node.gpu >= gpu
                and now - node.seen < ttl
                and _has(node, labels, by)
                and _close(node, spec, dist)
            ):
                yield node
        return
    # by_free holds (-cpu, -memory, node_id): from the start while cpu >= request for best_fit
    # and spread, backwards from the last node with enough cpu for pack
    enough_cpu = (-cpu, math.inf)
    keys: Iterable[tuple[float, int, str]]
    if spec.strategy == "pack":
        runs = [least_free_first(b.by_free.irange(maximum=enough_cpu, reverse=True)) for b in buckets]
        keys = runs[0] if len(runs) == 1 else heapq.merge(*runs, key=lambda k: (-k[0], -k[1], k[2]))
    else:
        its = [b.by_free.irange(maximum=enough_cpu) for b in buckets]
        keys = its[0] if len(its) == 1 else heapq.merge(*its)
    for _, m, nid in keys:
        if -m < mem:
            continue
        node = nodes[nid]
        ok = node.gpu >= gpu and now - node.seen < ttl and _has(node, labels, by)
        if ok and (near is None or _close(node, spec, dist)):
            yield node


def _close(node: Node, spec: JobSpec, dist: dict[str, float]) -> bool:
    near = spec.constraints.near
    if near is None:
        return True
    d = distance_of(node, spec)
    if d is None or d > near.max_km:
        return False
    dist[node.node_id] = d
    return True


def cells_near(spec: JobSpec, world: NodeTable) -> list[tuple[float, Bucket]]:
    """The non-empty grid cells that may hold nodes within ``near.max_km``, with the least
    distance any of their nodes can be at."""
    near = spec.constraints.near
    assert near is not None
    cells = world.geo_buckets(spec.technology, spec.resources.gpu > 0)
    if not cells:
        return []
    keys: Iterable[geo.Cell] = cells
    if geo.box_size(near.lat, near.lon, near.max_km) < len(cells):
        keys = [c for c in geo.box(near.lat, near.lon, near.max_km) or () if c in cells]
    out = []
    for c in keys:
        b = cells[c]
        if b.by_free:
            lb = geo.lower_bound_km(near.lat, near.lon, c)
            if lb <= near.max_km:
                out.append((lb, b))
    return out


def _near(spec: JobSpec, world: NodeTable, now: float, ttl: float, dist: dict[str, float]) -> Iterator[Node]:
    chosen = cells_near(spec, world)
    if spec.strategy != "nearest":
        if chosen:
            yield from _walk(spec, world, now, ttl, dist, [b for _, b in chosen])
        return
    # nearest: visit cells closest first; a node is final once no unvisited cell can be closer
    chosen.sort(key=lambda x: x[0])
    nodes = world.nodes
    heap: list[tuple[float, tuple[float, int, str]]] = []
    for i, (_, b) in enumerate(chosen):
        for node in _walk(spec, world, now, ttl, dist, [b]):
            heapq.heappush(heap, (dist[node.node_id], (-node.cpu, -node.memory, node.node_id)))
        bound = chosen[i + 1][0] if i + 1 < len(chosen) else math.inf
        while heap and heap[0][0] <= bound:
            yield nodes[heapq.heappop(heap)[1][2]]
