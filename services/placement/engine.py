"""The placement algorithm: filter, rank, assign. Pure functions, no I/O.

1. Filter (each exclusion counted under the first filter a node fails): active,
   technology, cpu, memory, gpu, labels, ``constraints.nodes``.
2. Rank by the job's strategy; ties by ``node_id`` ascending, so it is deterministic.
3. Assign replicas one at a time, subtracting each from the chosen node before the
   next; ``constraints.spread`` never puts two replicas on one node. A job is placed
   whole or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec

from schemas.events import Assignment, Candidate, Excluded
from schemas.jobs import JobSpec
from services.placement.state import Node
from services.runtime.config import InstanceType

FILTER_ORDER = ("inactive", "technology", "cpu", "memory", "gpu", "labels", "nodes", "spread")


class Placed(msgspec.Struct, frozen=True):
    assignments: list[Assignment]
    candidates: list[Candidate]


class NotPlaced(msgspec.Struct, frozen=True):
    reason: str
    nodes_total: int
    excluded: Excluded


def _first_failed(node: Node, spec: JobSpec, now: float, ttl: float, allowed: frozenset[str] | None) -> str | None:
    st = node.status
    r = spec.resources
    if not node.active(now, ttl):
        return "inactive"
    if spec.technology not in st.technologies:
        return "technology"
    if node.cpu_free() < r.cpu:
        return "cpu"
    if node.memory_free_mb() < r.memory_mb:
        return "memory"
    if node.gpu_free() < r.gpu:
        return "gpu"
    labels = spec.constraints.labels
    if labels and any(st.labels.get(k) != v for k, v in labels.items()):
        return "labels"
    if allowed is not None and st.node_id not in allowed:
        return "nodes"
    return None


SortKey = Callable[[str, float, int, int], tuple[float | int | str, ...]]
"""(node_id, cpu_free, memory_free_mb, replicas_of_this_job_on_node) -> sort key."""

_KEYS: dict[str, SortKey] = {
    "best_fit": lambda nid, cpu, mem, n: (-cpu, -mem, nid),
    "spread": lambda nid, cpu, mem, n: (n, -cpu, -mem, nid),
    "first_fit": lambda nid, cpu, mem, n: (nid,),
    "pack": lambda nid, cpu, mem, n: (cpu, mem, nid),
}


def explain(excluded: Excluded, total: int, spec: JobSpec) -> str:
    parts = []
    for name in FILTER_ORDER:
        n = getattr(excluded, name)
        if not n:
            continue
        what = {
            "inactive": "inactive",
            "technology": f"lack technology {spec.technology}",
            "cpu": "insufficient cpu",
            "memory": "insufficient memory",
            "gpu": "insufficient gpu",
            "labels": "labels do not match",
            "nodes": "not in constraints.nodes",
            "spread": "already hold a replica (spread)",
        }[name]
        parts.append(f"{n} {what}")
    head = f"0/{total} nodes available"
    return f"{head}: {', '.join(parts)}" if parts else head


def place(spec: JobSpec, nodes: Iterable[Node], now: float, ttl: float, top_n: int = 10) -> Placed | NotPlaced:
    """Decide where each replica of a shared job runs, or explain why it cannot."""
    allowed = frozenset(spec.constraints.nodes) if spec.constraints.nodes else None
    excluded = Excluded()
    qualified: list[Node] = []
    total = 0
    for node in nodes:
        total += 1
        failed = _first_failed(node, spec, now, ttl, allowed)
        if failed is None:
            qualified.append(node)
        else:
            setattr(excluded, failed, getattr(excluded, failed) + 1)
    key = _KEYS[spec.strategy]
    free = {n.node_id: (n.cpu_free(), n.memory_free_mb(), n.gpu_free()) for n in qualified}
    ranked = sorted(qualified, key=lambda n: key(n.node_id, free[n.node_id][0], free[n.node_id][1], 0))
    candidates = [
        Candidate(node_id=n.node_id, cpu_free=free[n.node_id][0], memory_free_mb=free[n.node_id][1])
        for n in ranked[:top_n]
    ]
    r = spec.resources
    counts: dict[str, int] = {}
    assignments: list[Assignment] = []
    for replica in range(spec.replicas):
        best: tuple[tuple[float | int | str, ...], str] | None = None
        for nid, (cpu, mem, gpu) in free.items():
            n = counts.get(nid, 0)
            if cpu < r.cpu or mem < r.memory_mb or gpu < r.gpu or (spec.constraints.spread and n):
                continue
            k = key(nid, cpu, mem, n)
            if best is None or k < best[0]:
                best = (k, nid)
        if best is None:
            if not qualified:
                return NotPlaced(explain(excluded, total, spec), total, excluded)
            excluded = msgspec.structs.replace(excluded)
            reason = (
                f"0/{total} nodes can hold all {spec.replicas} replicas: "
                f"{len(qualified)} qualify for one, only {replica} replicas fit"
            )
            if spec.constraints.spread:
                excluded.spread = len(qualified)
            return NotPlaced(reason, total, excluded)
        nid = best[1]
        cpu, mem, gpu = free[nid]
        free[nid] = (cpu - r.cpu, mem - r.memory_mb, gpu - r.gpu)
        counts[nid] = counts.get(nid, 0) + 1
        assignments.append(Assignment(replica=replica, node_id=nid))
    return Placed(assignments, candidates)


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
