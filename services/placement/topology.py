"""Topology spread (``constraints.spread_by``, §8.5): replicas spread evenly over the values
of a node label, with a maximum skew of 1 as in Kubernetes' topology spread constraints.

Pure. The *domains* are the label's values among the nodes that qualify for one replica
(every filter passed, before this job's replicas are subtracted); nodes without the label do
not qualify (counted under ``spread_by``). Each replica goes to a domain holding the fewest of
the job's replicas (kept ones included), so no domain ever holds two more than another; among
those domains, to the best node by the job's strategy (``constraints.spread`` still never
puts two replicas on one node). When every least-filled domain is full, no further replica
can keep the skew: the job does not fit (or, ``partial``, fits that many).

Fast path: the node table indexes each technology's nodes per value of the label
(:meth:`~services.placement.table.NodeTable.label_buckets`), so each domain is walked from its
best node and only as far as needed. With ``constraints.nodes`` or ``near``, the qualified
nodes are listed once and grouped by value.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from itertools import islice

from schemas.events import Assignment
from schemas.jobs import JobSpec
from services.placement.engine import NotPlaced, Placed, _not_placed, candidates_of
from services.placement.state import Node, World
from services.placement.walk import SortKey, distance_of, first_failed, ranked, sort_key

Free = tuple[float, int, int, int]
"""(cpu, memory, gpu, replicas of this job) of a node the job uses."""


class _Pool:
    """One domain: its qualified nodes in strategy order (read lazily) and the nodes of it this
    job already uses, in a heap by the strategy's key with their reduced free resources."""

    __slots__ = ("head", "heap", "it", "nxt")

    def __init__(self, nodes: Iterator[Node]) -> None:
        self.it = nodes
        self.head: list[Node] = []
        self.nxt = 0
        self.heap: list[tuple[tuple[float | int | str, ...], str]] = []

    def fresh(self, used: dict[str, Free]) -> Node | None:
        """The best qualified node of the domain this job does not use yet."""
        while True:
            if self.nxt == len(self.head):
                n = next(self.it, None)
                if n is None:
                    return None
                self.head.append(n)
            node = self.head[self.nxt]
            if node.node_id not in used:
                return node
            self.nxt += 1

    def best(
        self, key: SortKey, used: dict[str, Free], spec: JobSpec
    ) -> tuple[tuple[float | int | str, ...], str, Node | None] | None:
        """(key, node_id, the fresh node or None for a used one) of the domain's best option."""
        r = spec.resources
        heap = self.heap
        while heap:  # drop outdated entries and used nodes that no longer fit
            k, nid = heap[0]
            c, m, g, n = used[nid]
            if k == key(nid, c, m, n) and c >= r.cpu and m >= r.memory_mb and g >= r.gpu:
                break
            heapq.heappop(heap)
        node = self.fresh(used)
        if node is not None:
            k = key(node.node_id, node.cpu, node.memory, 0)
            if not heap or k < heap[0][0]:
                return k, node.node_id, node
        return (heap[0][0], heap[0][1], None) if heap else None


def place_spread_by(
    spec: JobSpec,
    world: World,
    now: float,
    ttl: float,
    *,
    top_n: int,
    explain_failure: bool,
    kept: Sequence[str],
    partial: bool,
) -> Placed | NotPlaced:
    """:func:`services.placement.engine.place` for a job with ``constraints.spread_by`` (which passes every
    option on, its defaults are ``place``'s)."""
    by = spec.constraints.spread_by
    assert by is not None
    r = spec.resources
    dist: dict[str, float] = {}
    key = sort_key(spec, dist)
    pools: dict[str, _Pool] = {}
    if spec.constraints.nodes or spec.constraints.near is not None:
        every = list(ranked(spec, world, now, ttl, dist))
        groups: dict[str, list[Node]] = {}
        for node in every:
            groups.setdefault(node.status.labels[by], []).append(node)
        pools = {v: _Pool(iter(ns)) for v, ns in groups.items()}
        head = every[:top_n]
    else:
        subs = world.label_buckets(spec.technology, r.gpu > 0, by)
        for v, b in subs.items():
            if b.by_free:
                pool = _Pool(ranked(spec, world, now, ttl, dist, bucket=b))
                if pool.fresh({}) is not None:
                    pools[v] = pool
        head = list(islice(ranked(spec, world, now, ttl, dist), top_n))
    used: dict[str, Free] = {}
    counts = dict.fromkeys(sorted(pools), 0)
    exclusive = spec.constraints.spread
    allowed = frozenset(spec.constraints.nodes) if spec.constraints.nodes else None
    offer: dict[str, str] = {}
    """Kept nodes that still qualify, by domain: offered again unless ``constraints.spread``."""
    for nid in kept:
        kn = world.nodes.get(nid)
        n = used.get(nid, (0.0, 0, 0, 0))[3]
        if kn is None or first_failed(kn, spec, now, ttl, allowed) is not None:
            used[nid] = (0.0, 0, 0, n + 1)  # never offered again
            value = kn.status.labels.get(by) if kn is not None else None
        else:
            offer[nid] = kn.status.labels[by]
            d = distance_of(kn, spec)
            if d is not None:
                dist[nid] = d
            used[nid] = (kn.cpu, kn.memory, kn.gpu, n + 1)
            value = kn.status.labels[by]
        if value in counts:
            counts[value] += 1
    for nid, value in offer.items():
        if not exclusive and value in pools:
            c, m, _, n = used[nid]
            heapq.heappush(pools[value].heap, (key(nid, c, m, n), nid))
    assignments: list[Assignment] = []
    for replica in range(spec.replicas):
        if not counts:
            break
        least = min(counts.values())
        choice: tuple[tuple[float | int | str, ...], str, Node | None] | None = None
        domain = ""
        for v, n in counts.items():
            if n != least:
                continue
            opt = pools[v].best(key, used, spec)
            if opt is not None and (choice is None or opt[0] < choice[0]):
                choice, domain = opt, v
        if choice is None:
            break
        _, nid, fresh = choice
        if fresh is not None:
            used[nid] = (fresh.cpu, fresh.memory, fresh.gpu, 0)
            pools[domain].nxt += 1
        c, m, g, n = used[nid]
        c, m, g, n = round(c - r.cpu, 6), m - r.memory_mb, g - r.gpu, n + 1
        used[nid] = (c, m, g, n)
        if not exclusive:
            heapq.heappush(pools[domain].heap, (key(nid, c, m, n), nid))
        counts[domain] += 1
        assignments.append(Assignment(replica=replica, node_id=nid))
    if len(assignments) < spec.replicas and not partial:
        return _not_placed(spec, world, now, ttl, len(assignments), explain_failure)
    return Placed(assignments, candidates_of(spec, head, dist))
