"""The node table: :class:`Node` (a node's last status, its reservations and its effective
free resources), :class:`Bucket` (the index of active nodes of one technology) and
:class:`NodeTable` (the nodes, their index, and which are stale, lost or drained).

``free = min(allocatable - reserved, reported free)``. See ``README.md`` in this package.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
from sortedcontainers import SortedList  # type: ignore[import-untyped]

from schemas.events import NodeStatus
from services.placement.geo import Cell, cell_of

FreeKey = tuple[float, int, str]
"""``(-cpu_free, -memory_free_mb, node_id)``: a node's position in ``Bucket.by_free``,
which is therefore in best_fit order (most free cpu, then memory, then id)."""

_K = TypeVar("_K")

DIGITS = 6
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
    """The key under which the node is indexed, None when it is not (not active / stale / drained)."""
    buckets: tuple[Bucket, ...] = ()
    drained: bool = False
    """Drained by a ``node.draining`` fact: takes nothing new (its replicas are moved)."""
    lost: bool = False
    """Silent for ``node_lost_s``: its replicas are moved; cleared by its next accepted status."""

    @property
    def node_id(self) -> str:
        return self.status.node_id

    def refresh(self) -> None:
        st = self.status
        self.cpu = max(0.0, round(min(st.cpu_cores - self.reserved_cpu, st.cpu_free), DIGITS))
        self.memory = max(0, min(st.memory_mb - self.reserved_memory_mb, st.memory_free_mb))
        self.gpu = max(0, st.gpus - self.reserved_gpu)

    def cpu_free(self) -> float:
        return self.cpu

    def memory_free_mb(self) -> int:
        return self.memory

    def gpu_free(self) -> int:
        return self.gpu

    def active(self, now: float, ttl: float) -> bool:
        return self.status.state == "active" and not (self.drained or self.lost) and now - self.seen < ttl

    def leaving(self) -> str | None:
        """Why this node's replicas must move (``node_lost`` / ``drain``), None while it may keep them."""
        state = self.status.state
        if self.lost or state == "down":
            return "node_lost"
        if self.drained or state == "draining":
            return "drain"
        return None


@dataclass
class NodeTable:
    """Nodes by id, the index of the active ones, and their liveness (TTL, lost, drained).

    Pure, no I/O. :class:`services.placement.state.World` adds the reservations, through
    two hooks: :meth:`_adopt` (a node heard of for the first time) and :meth:`_leaving_changed`
    (a node may have started or stopped leaving)."""

    nodes: dict[str, Node] = field(default_factory=dict)
    drained: set[str] = field(default_factory=set)
    """Nodes drained by a ``node.draining`` fact (known or not yet heard of)."""
    epoch: int = 0
    """Incremented by every change of capacity (a status saying something new, a drain, a release)."""
    _buckets: dict[tuple[str, bool], Bucket] = field(default_factory=dict)
    _live: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Indexed nodes, least recently seen first (statuses arrive in clock order)."""
    _heard: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Every node not yet lost, least recently seen first."""
    _geo: dict[tuple[str, bool], dict[Cell, Bucket]] = field(default_factory=dict)
    """Per technology (and gpu), the indexed nodes with a location, one bucket per grid cell."""
    _by_label: dict[tuple[str, bool, str], dict[str, Bucket]] = field(default_factory=dict)
    """Per technology (and gpu) and topology key, the indexed nodes per value of that label."""
    in_clock_order: bool = True
    """Every status was applied at a time no earlier than the one before (as the service does,
    on its monotonic clock), so ``expire`` leaves no stale node indexed."""
    _last_now: float = -math.inf
    topology_keys: set[str] = field(default_factory=set)
    """Label keys indexed per value (those a job has spread by; see :meth:`label_buckets`)."""

    def bucket(self, technology: str, gpu: bool) -> Bucket | None:
        return self._buckets.get((technology, gpu))

    def indexed(self) -> int:
        """How many nodes are indexed (active, fresh as of the last ``expire``, not drained or lost)."""
        return len(self._live)

    def geo_buckets(self, technology: str, gpu: bool) -> dict[Cell, Bucket]:
        return self._geo.get((technology, gpu), {})

    def label_buckets(self, technology: str, gpu: bool, key: str) -> dict[str, Bucket]:
        """The indexed nodes of a technology per value of label ``key``. The first call for a
        key indexes every active node by it (once, O(n log n)); later statuses keep it current."""
        if key not in self.topology_keys:
            self.topology_keys.add(key)
            for node in list(self.nodes.values()):
                if node.key is not None:
                    self._reindex(node, self._buckets_for(node.status))
        return self._by_label.get((technology, gpu, key), {})

    def update_node(self, status: NodeStatus, now: float) -> None:
        if now < self._last_now:
            self.in_clock_order = False
        self._last_now = now
        node = self.nodes.get(status.node_id)
        nid = status.node_id
        if node is None:
            node = Node(status=status, seen=now, drained=nid in self.drained)
            self.nodes[nid] = node
            self._adopt(node)
            same_buckets = False
        else:
            old = node.status
            if node.key is not None and not node.lost and _same_content(old, status):
                node.status = status  # fresh: only its time and liveness change, not capacity
                node.seen = now
                self._live.move_to_end(nid)
                self._heard.move_to_end(nid)
                return
            same_buckets = (
                old.state == status.state
                and old.technologies == status.technologies
                and (old.gpus > 0) == (status.gpus > 0)
                and node.key is not None
                and _cell(old) == _cell(status)
                and all(old.labels.get(k) == status.labels.get(k) for k in self.topology_keys)
            )
            node.status = status
            node.seen = now
        node.lost = False
        node.refresh()
        if same_buckets:
            self._move(node)
        else:
            self._reindex(node, self._buckets_for(status) if status.state == "active" and not node.drained else ())
            self._leaving_changed(nid)
        if node.key is not None:
            self._live[nid] = None
            self._live.move_to_end(nid)
        self._heard[nid] = None
        self._heard.move_to_end(nid)
        self.epoch += 1

    def _pop_silent(self, order: OrderedDict[str, None], now: float, after: float) -> Iterator[Node]:
        """Take from the front of ``order`` (least recently heard first) each node silent for
        ``after`` seconds, stopping at the first that is not."""
        while order:
            nid = next(iter(order))
            node = self.nodes[nid]
            if now - node.seen < after:
                return
            del order[nid]
            yield node

    def expire(self, now: float, ttl: float) -> int:
        """Drop nodes not heard of for ``ttl`` from the index; returns how many."""
        n = 0
        for node in self._pop_silent(self._live, now, ttl):
            self._reindex(node, ())
            n += 1
        return n

    def find_lost(self, now: float, lost_s: float) -> list[str]:
        """Mark nodes silent for ``lost_s`` as lost (their replicas must move); returns them."""
        out = []
        for node in self._pop_silent(self._heard, now, lost_s):
            nid = node.node_id
            node.lost = True
            if node.key is not None:  # stale by now anyway (node_lost_s >= the TTL)
                self._reindex(node, ())
            self._leaving_changed(nid)
            out.append(nid)
        return out

    def set_drained(self, node_id: str, drained: bool) -> None:
        """Apply a ``node.draining`` fact: a drained node leaves the index and its replicas move."""
        if drained:
            self.drained.add(node_id)
        else:
            self.drained.discard(node_id)
        node = self.nodes.get(node_id)
        if node is not None and node.drained != drained:
            node.drained = drained
            active = node.status.state == "active" and not drained
            self._reindex(node, self._buckets_for(node.status) if active else ())
            if node.key is not None:
                self._live[node_id] = None
                self._live.move_to_end(node_id)
        self._leaving_changed(node_id)
        self.epoch += 1

    def _adopt(self, node: Node) -> None:
        """A node heard of for the first time (before its free resources are computed)."""

    def _leaving_changed(self, node_id: str) -> None:
        """``node_id`` may have started or stopped leaving (lost, down, drained, draining)."""

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
        cell = _cell(status)
        if cell is not None:
            for k in keys:
                out.append(_sub(self._geo.setdefault(k, {}), cell))
        for key in self.topology_keys:
            value = status.labels.get(key)
            if value is not None:
                for t, g in keys:
                    out.append(_sub(self._by_label.setdefault((t, g, key), {}), value))
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


def _same_content(a: NodeStatus, b: NodeStatus) -> bool:
    """Whether two statuses of a node say the same but for their time and ``event_id`` (every other
    field of :class:`NodeStatus` compared, including any added later)."""
    return msgspec.structs.replace(a, at=b.at, event_id=b.event_id) == b


def _cell(status: NodeStatus) -> Cell | None:
    loc = status.location
    return None if loc is None else cell_of(loc.lat, loc.lon)


def _sub(index: dict[_K, Bucket], k: _K) -> Bucket:
    b = index.get(k)
    if b is None:
        b = index[k] = Bucket()
    return b
