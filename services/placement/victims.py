"""Which replicas to evict for one more replica of a job (§8.3), pure, over the world: the nodes that
could hold it once emptied, most free first, each with its *fewest* lower-priority victims (ties to the
set whose highest priority is lowest, then to the most recently placed, then by node id), the best of
them after ``MAX_CANDIDATES`` working nodes (like kube-scheduler's 100 candidate nodes) or ``MAX_WALK``
examined. Each node's victims come from the
per-node index of the replicas it holds (``World.holders``), never from a scan of every placed replica.
:mod:`services.placement.preempt` evicts them.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from schemas.jobs import JobSpec
from services.placement.engine import Placed
from services.placement.state import Bucket, Node, Reservation, World
from services.placement.walk import cells_near, distance_of

__all__ = ["MAX_CANDIDATES", "MAX_EXACT", "MAX_WALK", "Victim", "best_victims", "victim_key"]

MAX_CANDIDATES = 100
"""Nodes with a working victim set compared before choosing (kube-scheduler's default too)."""
MAX_WALK = 2_000
"""Nodes examined at most per replica that needs room."""
MAX_EXACT = 12
"""Lower-priority replicas on one node up to which the fewest victims are found exactly (by
combinations); above it, greedily (lowest priority, most recent, largest first)."""


@dataclass(frozen=True, slots=True)
class Victim:
    job_id: str
    replica: int
    node_id: str
    priority: int
    placed: float
    """When its job's revision was decided (POSIX seconds): the most recent is preempted first."""
    cpu: float
    memory_mb: int
    gpu: int


def victim_key(v: Victim) -> tuple[str, int]:
    """Job, then replica: the order victims are listed in."""
    return (v.job_id, v.replica)


def _order(spec: JobSpec, world: World) -> Iterator[Node]:
    """Nodes that could hold a replica once emptied, most free first (a cheap check first)."""
    r = spec.resources
    nodes = world.nodes
    c = spec.constraints
    if c.nodes:
        ids: Iterable[str] = sorted((n for n in set(c.nodes) if n in nodes), key=lambda n: nodes[n].key or ())
    else:
        if c.near is not None:
            buckets = [b for _, b in cells_near(spec, world)]
        else:
            b = world.bucket(spec.technology, r.gpu > 0)
            buckets = [] if b is None else [b]
        ids = (k[2] for k in _merge(buckets))
    for nid in ids:
        node = nodes[nid]
        st = node.status
        if st.cpu_cores >= r.cpu and st.memory_mb >= r.memory_mb and st.gpus >= r.gpu:
            yield node


def _merge(buckets: list[Bucket]) -> Iterable[tuple[float, int, str]]:
    lists = [b.by_free for b in buckets]
    return lists[0] if len(lists) == 1 else heapq.merge(*lists)


def _qualifies(node: Node, spec: JobSpec, now: float, ttl: float) -> bool:
    """Every filter but the resources."""
    st = node.status
    c = spec.constraints
    if not node.active(now, ttl) or spec.technology not in st.technologies:
        return False
    if c.labels and any(st.labels.get(k) != v for k, v in c.labels.items()):
        return False
    if c.nodes and st.node_id not in c.nodes:
        return False
    if c.near is not None:
        d = distance_of(node, spec)
        if d is None or d > c.near.max_km:
            return False
    return c.spread_by is None or c.spread_by in st.labels


SetKey = tuple[int, int, tuple[float, ...], str, tuple[tuple[str, int], ...]]


def best_victims(
    spec: JobSpec,
    world: World,
    now: float,
    ttl: float,
    partial: Placed,
    busy: set[str],
    evicted: Mapping[str, Reservation],
) -> list[Victim] | None:
    """The victims of the best node for one more replica of ``spec`` placed as ``partial``, or None.
    ``busy``: jobs never to take from; ``evicted``: jobs already revised by this preemption (by their
    reservation before it), which may lose more replicas."""
    r = spec.resources
    mine: dict[str, int] = {}
    for a in partial.assignments:
        assert a.node_id is not None
        mine[a.node_id] = mine.get(a.node_id, 0) + 1
    best: tuple[SetKey, list[Victim]] | None = None
    found = walked = 0
    for node in _order(spec, world):
        walked += 1
        if walked > MAX_WALK or found >= MAX_CANDIDATES:
            break
        nid = node.node_id
        if (spec.constraints.spread and nid in mine) or not _qualifies(node, spec, now, ttl):
            continue
        k = mine.get(nid, 0)
        st = node.status
        # free after evicting S: min(allocatable - reserved + S, reported free), less this job's own
        if st.cpu_free - k * r.cpu < r.cpu or st.memory_free_mb - k * r.memory_mb < r.memory_mb:
            continue  # the agent itself reports too little free: evictions would not show
        need = (
            round(r.cpu - (st.cpu_cores - node.reserved_cpu - k * r.cpu), 6),
            r.memory_mb - (st.memory_mb - node.reserved_memory_mb - k * r.memory_mb),
            r.gpu - (st.gpus - node.reserved_gpu - k * r.gpu),
        )
        if need[0] <= 0 and need[1] <= 0 and need[2] <= 0:
            continue  # fits without evicting: place() decides why not (skew), not us
        victims = _victims(world, nid, spec.priority, busy, need, evicted)
        if victims is None:
            continue
        found += 1
        key: SetKey = (
            len(victims),
            max(v.priority for v in victims),
            tuple(sorted(-v.placed for v in victims)),
            nid,
            tuple(sorted(victim_key(v) for v in victims)),
        )
        if best is None or key < best[0]:
            best = (key, victims)
    return None if best is None else best[1]


def _victims(
    world: World,
    nid: str,
    priority: int,
    busy: set[str],
    need: tuple[float, int, int],
    evicted: Mapping[str, Reservation],
) -> list[Victim] | None:
    """The best victim set on node ``nid`` freeing ``need`` (cpu, memory, gpu), or None."""
    lower: list[Victim] = []
    for job_id in world.holders.get(nid, {}):
        res = world.reservations.get(job_id)
        if res is None or job_id in busy or (world.tentative(job_id) and job_id not in evicted):
            continue  # revised in this chain already: one revision per job and chain
        d = res.decision
        prio = d.priority if d is not None else 0
        if prio >= priority:
            continue
        placed = d.at.timestamp() if d is not None else 0.0
        rs = res.resources
        # a job's replicas here are interchangeable: never more of them than the need takes
        # alone, the highest replica numbers first (as a shrink removes them)
        most = max(
            (
                math.ceil(n / size - 1e-9)
                for n, size in zip(need, (rs.cpu, rs.memory_mb, rs.gpu), strict=True)
                if size > 0 and n > 0
            ),
            default=0,
        )
        mine = sorted((r for r, n in zip(res.replicas, res.node_ids, strict=True) if n == nid), reverse=True)
        for replica in mine[:most]:
            lower.append(Victim(job_id, replica, nid, prio, placed, rs.cpu, rs.memory_mb, rs.gpu))
    if not lower:
        return None
    lower.sort(key=lambda v: (v.priority, -v.placed, v.job_id, v.replica))
    total = (sum(v.cpu for v in lower), sum(v.memory_mb for v in lower), sum(v.gpu for v in lower))
    if total[0] < need[0] - 1e-9 or total[1] < need[1] or total[2] < need[2]:
        return None
    if len(lower) > MAX_EXACT:
        out: list[Victim] = []
        got = [0.0, 0, 0]
        for v in sorted(lower, key=lambda v: (v.priority, -v.cpu, -v.memory_mb, -v.placed, v.job_id, v.replica)):
            out.append(v)
            got = [got[0] + v.cpu, got[1] + v.memory_mb, got[2] + v.gpu]
            if got[0] >= need[0] - 1e-9 and got[1] >= need[1] and got[2] >= need[2]:
                return out
        return None
    for size in range(1, len(lower) + 1):
        best: tuple[tuple[int, tuple[float, ...], tuple[tuple[str, int], ...]], list[Victim]] | None = None
        for combo in itertools.combinations(lower, size):
            if (
                sum(v.cpu for v in combo) >= need[0] - 1e-9
                and sum(v.memory_mb for v in combo) >= need[1]
                and sum(v.gpu for v in combo) >= need[2]
            ):
                key = (
                    max(v.priority for v in combo),
                    tuple(sorted(-v.placed for v in combo)),
                    tuple(sorted(victim_key(v) for v in combo)),
                )
                if best is None or key < best[0]:
                    best = (key, list(combo))
        if best is not None:
            return best[1]
    return None
