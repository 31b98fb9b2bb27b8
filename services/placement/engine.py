"""The placement algorithm: filter, rank, assign. Pure functions over the node table, no I/O.

1. Filter (each exclusion counted under the first filter a node fails): active,
   technology, cpu, memory, gpu, labels, ``constraints.nodes``.
2. Rank by the job's strategy; ties by ``node_id`` ascending, so it is deterministic.
3. Assign replicas one at a time, subtracting each from the chosen node before the
   next; ``constraints.spread`` never puts two replicas on one node. A job is placed
   whole or not at all.

Fast path: the node table keeps, per technology, the active nodes sorted by free
resources and by id (:class:`~services.placement.state.Bucket`). A decision walks a
bucket in the strategy's order, starting at the right place, and stops after the first
``max(top_n, replicas)`` nodes that pass every filter: those are the candidates, and
they are enough to assign every replica, because a node untouched by this job keeps
its rank, so the best untouched node for replica ``i`` is among the first ``i + 1``.
Nodes the job already uses are re-ranked with their reduced free resources in a
small heap. The per-filter counts of the explanation need every node, so they are
computed by a full scan only when a job does not fit and an explanation is wanted.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Sequence
from itertools import islice

import msgspec

from schemas.events import Assignment, Candidate, Excluded
from schemas.jobs import JobSpec
from services.placement.state import Node, World
from services.placement.walk import KEYS, distance_of, first_failed, ranked, sort_key
from services.runtime.config import InstanceType

__all__ = ["FILTER_ORDER", "KEYS", "NotPlaced", "Placed", "census", "first_failed", "place", "place_dedicated"]

FILTER_ORDER = (
    "inactive",
    "technology",
    "cpu",
    "memory",
    "gpu",
    "labels",
    "nodes",
    "distance",
    "spread_by",
    "spread",
)

_WHAT = {
    "inactive": "inactive",
    "technology": "lack technology {tech}",
    "cpu": "insufficient cpu",
    "memory": "insufficient memory",
    "gpu": "insufficient gpu",
    "labels": "labels do not match",
    "nodes": "not in constraints.nodes",
    "distance": "too far or without location (near)",
    "spread_by": "lack label {key} (spread_by)",
    "spread": "already hold a replica (spread)",
}


class Placed(msgspec.Struct, frozen=True):
    assignments: list[Assignment]
    candidates: list[Candidate]


class NotPlaced(msgspec.Struct, frozen=True):
    reason: str
    nodes_total: int
    excluded: Excluded


def explain(excluded: Excluded, total: int, spec: JobSpec) -> str:
    """kube-scheduler style: ``0/50 nodes available: 30 lack technology unikernel, 12 insufficient cpu``."""
    parts = [
        f"{n} {_WHAT[name].format(tech=spec.technology, key=spec.constraints.spread_by)}"
        for name in FILTER_ORDER
        if (n := getattr(excluded, name))
    ]
    head = f"0/{total} nodes available"
    return f"{head}: {', '.join(parts)}" if parts else head


def census(spec: JobSpec, world: World, now: float, ttl: float) -> tuple[Excluded, int]:
    """Count every node under the first filter it fails; returns (excluded, qualified).

    From the index where it can: after ``expire``, the nodes not indexed are exactly the
    inactive ones, the indexed ones outside the technology's bucket lack the technology, and
    the bucket's nodes short of cpu are counted by one bisection of ``by_free``; only the nodes
    with enough cpu are checked one by one. So a full fleet costs O(log n), not a scan. (When
    statuses were applied out of clock order, as tests do, ``expire`` may leave a stale node
    indexed: then every node is checked.)"""
    world.expire(now, ttl)
    allowed = frozenset(spec.constraints.nodes) if spec.constraints.nodes else None
    counts = dict.fromkeys(FILTER_ORDER, 0)
    if not world.in_clock_order:  # a stale node may still be indexed: check every node
        qualified = 0
        for node in world.nodes.values():
            failed = first_failed(node, spec, now, ttl, allowed)
            if failed is None:
                qualified += 1
            else:
                counts[failed] += 1
        return Excluded(**counts), qualified
    live = world.indexed()
    counts["inactive"] = len(world.nodes) - live
    bucket = world.bucket(spec.technology, False)
    if bucket is None:
        counts["technology"] = live
        return Excluded(**counts), 0
    counts["technology"] = live - len(bucket.by_id)
    enough = bucket.by_free.bisect_right((-spec.resources.cpu, math.inf))
    counts["cpu"] = len(bucket.by_free) - enough
    qualified = 0
    nodes = world.nodes
    for _, _, nid in bucket.by_free.islice(0, enough):
        failed = first_failed(nodes[nid], spec, now, ttl, allowed)
        if failed is None:
            qualified += 1
        else:
            counts[failed] += 1
    return Excluded(**counts), qualified


def place(
    spec: JobSpec,
    world: World,
    now: float,
    ttl: float,
    top_n: int = 10,
    *,
    explain_failure: bool = True,
    kept: Sequence[str] = (),
    partial: bool = False,
) -> Placed | NotPlaced:
    """Decide where each replica of a shared job runs, or explain why it cannot.

    Does not reserve: the caller applies the decision to ``world`` once it is taken.
    With ``explain_failure=False`` a job that does not fit costs no full scan, and the
    ``NotPlaced`` carries no counts (used for retries before the deadline).

    Re-placement: ``kept`` are the nodes of the job's replicas that stay where they are
    (already booked in ``world``); they count for the strategy (``spread``: replicas per
    node) and for ``constraints.spread`` (never a second replica there). ``partial``: place
    as many of ``spec.replicas`` as fit and return them (possibly none) as ``Placed``.
    """
    world.expire(now, ttl)
    if spec.constraints.spread_by is not None:
        from services.placement.topology import place_spread_by

        return place_spread_by(
            spec, world, now, ttl, top_n=top_n, explain_failure=explain_failure, kept=kept, partial=partial
        )
    r = spec.resources
    dist: dict[str, float] = {}
    head = list(islice(ranked(spec, world, now, ttl, dist), max(top_n, spec.replicas + len(kept))))
    key = sort_key(spec, dist)
    exclusive = spec.constraints.spread
    # nodes this job already uses: a heap of (key, node_id) with their reduced free resources
    used: dict[str, tuple[float, int, int, int]] = {}
    heap: list[tuple[tuple[float | int | str, ...], str]] = []
    if kept:
        seed(spec, world, now, ttl, kept, used, heap, dist)
    nxt = 0  # head[:nxt] are used, head[nxt] is the best untouched node
    assignments: list[Assignment] = []
    for replica in range(spec.replicas):
        while heap:  # drop outdated entries and used nodes that no longer fit (they never will again)
            k, nid = heap[0]
            c, m, g, n = used[nid]
            if k == key(nid, c, m, n) and c >= r.cpu and m >= r.memory_mb and g >= r.gpu:
                break
            heapq.heappop(heap)
        if kept:  # the kept nodes are in ``used`` already (and in the heap unless exclusive)
            while nxt < len(head) and head[nxt].node_id in used:
                nxt += 1
        choice: str | None = None
        if nxt < len(head):
            node = head[nxt]
            if not heap or key(node.node_id, node.cpu, node.memory, 0) < heap[0][0]:
                choice = node.node_id
                used[choice] = (node.cpu, node.memory, node.gpu, 0)
                nxt += 1
        if choice is None and heap:
            choice = heap[0][1]
        if choice is None:
            if partial:
                break
            return _not_placed(spec, world, now, ttl, replica, explain_failure)
        c, m, g, n = used[choice]
        c, m, g, n = round(c - r.cpu, 6), m - r.memory_mb, g - r.gpu, n + 1
        used[choice] = (c, m, g, n)
        if not exclusive:
            heapq.heappush(heap, (key(choice, c, m, n), choice))
        assignments.append(Assignment(replica=replica, node_id=choice))
    return Placed(assignments, candidates_of(spec, head[:top_n], dist))


def candidates_of(spec: JobSpec, head: Sequence[Node], dist: dict[str, float]) -> list[Candidate]:
    near = spec.constraints.near is not None
    return [
        Candidate(
            node_id=n.node_id,
            cpu_free=n.cpu,
            memory_free_mb=n.memory,
            distance_km=round(dist[n.node_id], 1) if near and n.node_id in dist else None,
        )
        for n in head
    ]


def seed(
    spec: JobSpec,
    world: World,
    now: float,
    ttl: float,
    kept: Sequence[str],
    used: dict[str, tuple[float, int, int, int]],
    heap: list[tuple[tuple[float | int | str, ...], str]],
    dist: dict[str, float],
) -> None:
    """Count the kept replicas' nodes as used by the job: offered again (with their replica
    count, for ``spread``) only if they still qualify and the job allows two replicas there."""
    allowed = frozenset(spec.constraints.nodes) if spec.constraints.nodes else None
    key = sort_key(spec, dist)
    for nid, n in Counter(kept).items():
        node = world.nodes.get(nid)
        if node is None or first_failed(node, spec, now, ttl, allowed) is not None:
            used[nid] = (0.0, 0, 0, n)  # never offered: not in the heap, skipped in the head
            continue
        d = distance_of(node, spec)
        if d is not None:
            dist[nid] = d
        used[nid] = (node.cpu, node.memory, node.gpu, n)
        if not spec.constraints.spread:
            heapq.heappush(heap, (key(nid, node.cpu, node.memory, n), nid))


def shortfall(spec: JobSpec, world: World, now: float, ttl: float, fitted: int) -> NotPlaced:
    """The explanation (full census) for a job of which only ``fitted`` of ``spec.replicas`` fit."""
    return _not_placed(spec, world, now, ttl, fitted, True)


def _not_placed(spec: JobSpec, world: World, now: float, ttl: float, fitted: int, full: bool) -> NotPlaced:
    total = len(world.nodes)
    if not full:
        return NotPlaced(f"0/{total} nodes available", total, Excluded())
    excluded, qualified = census(spec, world, now, ttl)
    if not qualified:
        return NotPlaced(explain(excluded, total, spec), total, excluded)
    if spec.constraints.spread:
        excluded.spread = qualified
    reason = (
        f"{explain(excluded, total, spec)}; {qualified} qualify for one replica "
        f"but only {fitted} of {spec.replicas} replicas fit"
    )
    if spec.constraints.spread_by is not None:
        reason += f" with spread_by {spec.constraints.spread_by} (max skew 1)"
    return NotPlaced(reason, total, excluded)


def place_dedicated(spec: JobSpec, catalogue: list[InstanceType], top_n: int = 10) -> Placed | NotPlaced:
    """Rank instance types for a dedicated cluster: cheapest that fits first."""
    r = spec.resources
    fits = [t for t in catalogue if t.vcpu >= r.cpu and t.memory_mb >= r.memory_mb and t.gpu >= r.gpu]
    if not fits:
        return NotPlaced(
            f"0/{len(catalogue)} instance types offer {r.cpu:g} cpu, {r.memory_mb} MiB, {r.gpu} gpu",
            len(catalogue),
            Excluded(),
        )
    fits.sort(key=lambda t: (t.price_hourly, t.vcpu, t.memory_mb, t.name))
    best = fits[0].name
    return Placed(
        [Assignment(replica=i, instance_type=best) for i in range(spec.replicas)],
        [
            Candidate(instance_type=t.name, vcpu=t.vcpu, memory_mb=t.memory_mb, gpu=t.gpu, price_hourly=t.price_hourly)
            for t in fits[:top_n]
        ],
    )
