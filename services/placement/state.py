"""The placement service's view of the world: the indexed node table and the reservation ledger.

Pure data structures with no I/O. The node table is fed by ``node.status.*``; the
ledger by ``placement.decided`` / ``placement.released`` (and rebuilt from the
PLACEMENTS stream on start). ``free = min(allocatable - reserved, reported free)``.

The index (see ``README.md`` in this package): every node whose state is ``active``
sits in one :class:`Bucket` per technology it supports (plus a second, smaller one per
technology for nodes with gpus), where ``by_free`` keeps ``(-cpu_free, -memory_free_mb,
node_id)`` sorted (best_fit order) and ``by_id`` keeps node ids sorted. Each status, reservation or
release moves a node in O(log n); a decision reads a few entries at one end of a
bucket instead of scanning every node. Nodes whose last status is older than the TTL
are dropped from the index by :meth:`World.expire` (they keep their reservations).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from schemas.events import NodeStatus, PlacementDecided
from schemas.jobs import Resources

FreeKey = tuple[float, int, str]
"""``(-cpu_free, -memory_free_mb, node_id)``: a node's position in ``Bucket.by_free``,
which is therefore in best_fit order (most free cpu, then memory, then id)."""

_DIGITS = 6
"""Free cpu is rounded to a micro-core, so adding and removing fractions leaves no dust."""


class Bucket:
    """Active nodes of one technology (optionally: only those with gpus), in two orders."""

    __slots__ = ("by_free", "by_id")

    def __init__(self) -> None:
        self.by_free: SortedList = SortedList()
        self.by_id: SortedList = SortedList()


@dataclass(slots=True, eq=False)
class Node:
    status: NodeStatus
    seen: float
    """When the last accepted status arrived, on the placement service's monotonic clock."""
    reserved_cpu: float = 0.0
    reserved_memory_mb: int = 0
    reserved_gpu: int = 0
    cpu: float = 0.0
    """Free cpu: min(allocatable - reserved, reported free), never below 0."""
    memory: int = 0
    gpu: int = 0
    key: FreeKey | None = None
    """The key under which the node is indexed, None when it is not (not active / stale)."""
    buckets: tuple[Bucket, ...] = ()

    @property
    def node_id(self) -> str:
        return self.status.node_id

    def refresh(self) -> None:
        st = self.status
        self.cpu = max(0.0, round(min(st.cpu_cores - self.reserved_cpu, st.cpu_free), _DIGITS))
        self.memory = max(0, min(st.memory_mb - self.reserved_memory_mb, st.memory_free_mb))
        self.gpu = max(0, st.gpus - self.reserved_gpu)

    def cpu_free(self) -> float:
        return self.cpu

    def memory_free_mb(self) -> int:
        return self.memory

    def gpu_free(self) -> int:
        return self.gpu

    def active(self, now: float, ttl: float) -> bool:
        return self.status.state == "active" and now - self.seen < ttl


@dataclass(slots=True)
class Reservation:
    job_id: str
    resources: Resources
    node_ids: tuple[str, ...]


@dataclass
class World:
    """Nodes (indexed) plus the reservations held on them, keyed by job (idempotent by job id)."""

    nodes: dict[str, Node] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    _orphan: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    _buckets: dict[tuple[str, bool], Bucket] = field(default_factory=dict)
    _live: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Indexed nodes, least recently seen first (statuses arrive in clock order)."""

    # --- node table ---------------------------------------------------------
    def bucket(self, technology: str, gpu: bool) -> Bucket | None:
        return self._buckets.get((technology, gpu))

    def update_node(self, status: NodeStatus, now: float) -> None:
        node = self.nodes.get(status.node_id)
        if node is None:
            node = Node(status=status, seen=now)
            for cpu, mem, gpu in self._orphan.pop(status.node_id, ()):
                node.reserved_cpu += cpu
                node.reserved_memory_mb += mem
                node.reserved_gpu += gpu
            self.nodes[status.node_id] = node
            same_buckets = False
        else:
            old = node.status
            same_buckets = (
                old.state == status.state
                and old.technologies == status.technologies
                and (old.gpus > 0) == (status.gpus > 0)
                and node.key is not None
            )
            node.status = status
            node.seen = now
        node.refresh()
        if same_buckets:
            self._move(node)
        else:
            self._reindex(node, self._buckets_for(status) if status.state == "active" else ())
        if node.key is not None:
            self._live[status.node_id] = None
            self._live.move_to_end(status.node_id)

    def expire(self, now: float, ttl: float) -> int:
        """Drop nodes not heard of for ``ttl`` from the index; returns how many."""
        n = 0
        live = self._live
        while live:
            nid = next(iter(live))
            node = self.nodes[nid]
            if now - node.seen < ttl:
                break
            del live[nid]
            self._reindex(node, ())
            n += 1
        return n

    def _buckets_for(self, status: NodeStatus) -> tuple[Bucket, ...]:
        keys = [(t, False) for t in dict.fromkeys(status.technologies)]
        if status.gpus > 0:
            keys += [(t, True) for t, _ in keys]
        out = []
        for k in keys:
            b = self._buckets.get(k)
            if b is None:
                b = self._buckets[k] = Bucket()
            out.append(b)
        return tuple(out)

    def _move(self, node: Node) -> None:
        """Re-key an indexed node after its free resources changed (same buckets)."""
        key = (-node.cpu, -node.memory, node.node_id)
        old = node.key
        if key == old:
            return
        for b in node.buckets:
            b.by_free.remove(old)
            b.by_free.add(key)
        node.key = key

    def _reindex(self, node: Node, buckets: tuple[Bucket, ...]) -> None:
        nid = node.node_id
        if node.key is not None:
            for b in node.buckets:
                b.by_free.remove(node.key)
                if b not in buckets:
                    b.by_id.remove(nid)
        key = (-node.cpu, -node.memory, nid) if buckets else None
        for b in buckets:
            b.by_free.add(key)
            if b not in node.buckets or node.key is None:
                b.by_id.add(nid)
        node.buckets = buckets
        node.key = key
        if key is None:
            self._live.pop(nid, None)

    # --- ledger -------------------------------------------------------------
    def reserve(self, job_id: str, resources: Resources, node_ids: tuple[str, ...]) -> bool:
        """Record a job's reservation once; False if it is known already or was released."""
        if job_id in self.reservations or job_id in self.released:
            return False
        self.reservations[job_id] = Reservation(job_id, resources, node_ids)
        self._apply(resources, node_ids, +1)
        return True

    def release(self, job_id: str) -> bool:
        """Release a job's reservation exactly once; False if it had none."""
        self.released.add(job_id)
        r = self.reservations.pop(job_id, None)
        if r is None:
            return False
        self._apply(r.resources, r.node_ids, -1)
        return True

    def apply_decided(self, e: PlacementDecided) -> bool:
        if e.cluster != "shared" or e.resources is None:
            return False
        nodes = tuple(a.node_id for a in e.assignments if a.node_id is not None)
        return self.reserve(e.job_id, e.resources, nodes)

    def _apply(self, r: Resources, node_ids: tuple[str, ...], sign: int) -> None:
        for nid in node_ids:
            node = self.nodes.get(nid)
            if node is None:  # decided before this node's status arrived (e.g. during replay)
                self._orphan.setdefault(nid, []).append((sign * r.cpu, sign * r.memory_mb, sign * r.gpu))
                continue
            node.reserved_cpu += sign * r.cpu
            node.reserved_memory_mb += sign * r.memory_mb
            node.reserved_gpu += sign * r.gpu
            node.refresh()
            if node.key is not None:
                self._move(node)
