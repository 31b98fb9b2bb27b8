"""The rows of the node table: :class:`Node` (a node's last status, its reservations and its
effective free resources) and :class:`Bucket` (the index of active nodes of one technology).

``free = min(allocatable - reserved, reported free)``. See ``README.md`` in this package.
"""

from __future__ import annotations

from dataclasses import dataclass

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from schemas.events import NodeStatus

FreeKey = tuple[float, int, str]
"""``(-cpu_free, -memory_free_mb, node_id)``: a node's position in ``Bucket.by_free``,
which is therefore in best_fit order (most free cpu, then memory, then id)."""

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
