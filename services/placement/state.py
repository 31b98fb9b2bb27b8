"""The placement service's view of the world: the node table and the reservation ledger.

Pure data structures with no I/O. The node table is fed by ``node.status.*``; the
ledger by ``placement.decided`` / ``placement.released`` (and rebuilt from the
PLACEMENTS stream on start). ``free = min(allocatable - reserved, reported free)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.events import NodeStatus, PlacementDecided
from schemas.jobs import Resources


@dataclass(slots=True)
class Node:
    status: NodeStatus
    seen: float
    """When the last accepted status arrived, on the placement service's monotonic clock."""
    reserved_cpu: float = 0.0
    reserved_memory_mb: int = 0
    reserved_gpu: int = 0

    @property
    def node_id(self) -> str:
        return self.status.node_id

    def cpu_free(self) -> float:
        return max(0.0, min(self.status.cpu_cores - self.reserved_cpu, self.status.cpu_free))

    def memory_free_mb(self) -> int:
        return max(0, min(self.status.memory_mb - self.reserved_memory_mb, self.status.memory_free_mb))

    def gpu_free(self) -> int:
        return max(0, self.status.gpus - self.reserved_gpu)

    def active(self, now: float, ttl: float) -> bool:
        return self.status.state == "active" and now - self.seen < ttl


@dataclass(slots=True)
class Reservation:
    job_id: str
    resources: Resources
    node_ids: tuple[str, ...]


@dataclass
class World:
    """Nodes plus the reservations held on them, keyed by job (idempotent by job id)."""

    nodes: dict[str, Node] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    _orphan: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)

    def update_node(self, status: NodeStatus, now: float) -> None:
        node = self.nodes.get(status.node_id)
        if node is None:
            node = Node(status=status, seen=now)
            for cpu, mem, gpu in self._orphan.pop(status.node_id, ()):
                node.reserved_cpu += cpu
                node.reserved_memory_mb += mem
                node.reserved_gpu += gpu
            self.nodes[status.node_id] = node
        else:
            node.status = status
            node.seen = now

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
