"""The placement service's view of the world: the indexed node table and the reservation ledger.

Pure data structures with no I/O. The node table (:class:`NodeTable` in ``table.py``,
which :class:`World` extends) is fed by ``node.status.*`` and the
``node.draining.*`` facts; the ledger by ``placement.decided`` revisions and
``placement.released`` (and rebuilt from the PLACEMENTS stream on start).

The index (see ``README.md`` in this package): every node whose state is ``active`` and
that is not drained sits in one :class:`Bucket` per technology it supports (plus a second,
smaller one per technology for nodes with gpus). Each status, reservation or release
moves a node in O(log n). Nodes whose last status is older than the TTL are dropped from
the index by :meth:`World.expire` (they keep their reservations); nodes silent for
``node_lost_s`` are marked lost by :meth:`World.find_lost`.

Revisions: a job's :class:`Reservation` is the booking of its highest applied revision,
one node per placed replica. ``holders`` indexes node -> jobs holding replicas there, so
the replicas of a lost or drained node are found without scanning every reservation;
``evacuate`` is the set of leaving nodes that still hold replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.events import PlacementDecided
from schemas.jobs import Resources
from services.placement.table import Bucket, FreeKey, Node, NodeTable

__all__ = ["Bucket", "FreeKey", "Node", "NodeTable", "Reservation", "World"]


@dataclass(slots=True)
class Reservation:
    job_id: str
    resources: Resources
    node_ids: tuple[str, ...]
    """The node of each placed replica, in the order of ``replicas``."""
    revision: int = 1
    replicas: tuple[int, ...] = ()
    """The replica numbers placed (a replica that fits nowhere for now is absent)."""
    decision: PlacementDecided | None = None
    """The decided event of this revision (what a re-placement needs); None for bookings made
    without one (tests)."""
    missing_reasons: dict[int, str] = field(default_factory=dict)
    """For each missing replica, the reason it lost its node (``node_lost`` / ``drain``), or
    ``scale`` for one added by ``job.scale`` that has never fit."""

    def assignments(self) -> dict[int, str]:
        return dict(zip(self.replicas, self.node_ids, strict=True))

    def missing(self) -> list[int]:
        wanted = self.decision.wanted if self.decision is not None else len(self.replicas)
        placed = set(self.replicas)
        return [r for r in range(wanted) if r not in placed]


def _booking(e: PlacementDecided, prev: Reservation | None) -> Reservation:
    assert e.resources is not None
    pairs = sorted((a.replica, a.node_id) for a in e.assignments if a.node_id is not None)
    reasons = dict(prev.missing_reasons) if prev is not None else {}
    for c in e.changes:
        if c.to is None:
            reasons[c.replica] = c.reason
    if prev is not None and prev.decision is not None:
        for r in range(prev.decision.wanted, e.wanted):  # added by job.scale: missing until placed
            reasons.setdefault(r, "scale")
    placed = {r for r, _ in pairs}
    reasons = {r: why for r, why in reasons.items() if r not in placed and r < e.wanted}
    return Reservation(
        e.job_id,
        e.resources,
        tuple(n for _, n in pairs),
        e.revision,
        tuple(r for r, _ in pairs),
        e,
        reasons,
    )


@dataclass
class World(NodeTable):
    """Nodes (indexed) plus the reservations held on them, keyed by job (idempotent by job id
    and revision)."""

    reservations: dict[str, Reservation] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    holders: dict[str, dict[str, int]] = field(default_factory=dict)
    """node_id -> job_id -> replicas of that job booked there."""
    short: set[str] = field(default_factory=set)
    """Jobs whose latest revision places fewer replicas than they want (degraded or about to be)."""
    degraded: dict[str, int] = field(default_factory=dict)
    """job_id -> revision of its latest ``placement.degraded`` (knowledge only, no booking)."""
    evacuate: set[str] = field(default_factory=set)
    """Leaving nodes (lost, down, draining) that still hold replicas."""
    unheard: set[str] = field(default_factory=set)
    """Nodes holding replicas whose status this instance has never had (e.g. after a restart)."""
    _lost_unheard: set[str] = field(default_factory=set)
    _orphan: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    _tentative: dict[str, Reservation | None] = field(default_factory=dict)
    """Jobs decided locally and not yet stored, with the reservation they had before."""
    _shadow: dict[str, PlacementDecided] = field(default_factory=dict)
    """Stored decisions of tentative jobs, applied once the tentative one is confirmed or undone."""

    def _adopt(self, node: Node) -> None:
        nid = node.node_id
        for cpu, mem, gpu in self._orphan.pop(nid, ()):
            node.reserved_cpu += cpu
            node.reserved_memory_mb += mem
            node.reserved_gpu += gpu
        self.unheard.discard(nid)
        self._lost_unheard.discard(nid)

    def mark_lost(self, node_id: str) -> None:
        """A node holding replicas that has never reported to this instance is lost."""
        if node_id not in self.nodes:
            self._lost_unheard.add(node_id)
            self._leaving_changed(node_id)

    def leaving(self, node_id: str) -> str | None:
        """``node_lost`` / ``drain`` when the replicas on ``node_id`` must move, else None."""
        node = self.nodes.get(node_id)
        if node is None:
            if node_id in self._lost_unheard:
                return "node_lost"
            return "drain" if node_id in self.drained else None
        return node.leaving()

    def jobs_to_move(self) -> list[str]:
        """Jobs holding replicas on leaving nodes (each once)."""
        return list(dict.fromkeys(j for nid in self.evacuate for j in self.holders.get(nid, ())))

    def _leaving_changed(self, node_id: str) -> None:
        if self.leaving(node_id) is not None and self.holders.get(node_id):
            self.evacuate.add(node_id)
        else:
            self.evacuate.discard(node_id)

    def reserve(self, job_id: str, resources: Resources, node_ids: tuple[str, ...]) -> bool:
        """Record a job's reservation once (revision 1, replica i on ``node_ids[i]``); False if it
        is known already or was released."""
        if job_id in self.reservations or job_id in self.released:
            return False
        self._book(Reservation(job_id, resources, node_ids, 1, tuple(range(len(node_ids)))))
        return True

    def release(self, job_id: str) -> bool:
        """Release a job's reservation exactly once; False if it had none."""
        self.released.add(job_id)
        if self.short:
            self.short.discard(job_id)
        if self.degraded:
            self.degraded.pop(job_id, None)
        r = self.reservations.get(job_id)
        if r is None:
            return False
        self._unbook(r)
        self.epoch += 1
        return True

    def apply_decided(self, e: PlacementDecided) -> bool:
        """A stored ``placement.decided``: book its revision if it is the job's highest (releasing
        the previous one once). Ignored for dedicated and released jobs and older revisions."""
        if e.cluster != "shared" or e.resources is None or e.job_id in self.released:
            return False
        if e.job_id in self._tentative:  # ours is in flight: keep the stream's for later
            shadow = self._shadow.get(e.job_id)
            if shadow is None or e.revision > shadow.revision:
                self._shadow[e.job_id] = e
            return False
        return self._supersede(e)

    def decide_locally(self, e: PlacementDecided) -> None:
        """The decider's decision, booked before it is stored: :meth:`confirm` or :meth:`undo` it."""
        if e.job_id not in self._tentative:
            self._tentative[e.job_id] = self.reservations.get(e.job_id)
        self._supersede(e)

    def revise_locally(self, e: PlacementDecided) -> None:
        """Replace the local, not yet stored decision of a job with ``e`` (the same revision
        thought over: a preemption's victim, first without its evicted replicas, then with them
        placed again); :meth:`undo` still restores the booking from before the first."""
        assert e.job_id in self._tentative
        cur = self.reservations.get(e.job_id)
        if cur is not None:
            self._unbook(cur)
        self._book(_booking(e, self._tentative[e.job_id]))

    def tentative(self, job_id: str) -> bool:
        """Whether ``job_id`` has a local decision not yet stored (or refused)."""
        return job_id in self._tentative

    def confirm(self, job_id: str) -> None:
        """The local decision was stored: it stands (unless the stream already holds a later one)."""
        self._tentative.pop(job_id, None)
        shadow = self._shadow.pop(job_id, None)
        if shadow is not None:
            self.apply_decided(shadow)

    def undo(self, job_id: str) -> None:
        """The local decision was refused: restore the previous revision's reservation exactly,
        then apply whatever the stream stored for the job meanwhile."""
        if job_id not in self._tentative:
            return
        prev = self._tentative.pop(job_id)
        shadow = self._shadow.pop(job_id, None)
        cur = self.reservations.get(job_id)
        if job_id not in self.released:
            if cur is not None:
                self._unbook(cur)
            if prev is not None:
                self._book(prev)
        if shadow is not None:
            self.apply_decided(shadow)

    def settled(self) -> bool:
        """No local decision is in flight: every reservation is a stored revision's (a snapshot
        may be taken)."""
        return not self._tentative

    def restore(self, r: Reservation) -> None:
        """Book ``r`` as loaded from a snapshot (its job's highest stored revision, with the
        missing replicas' reasons carried from earlier revisions)."""
        prev = self.reservations.get(r.job_id)
        if prev is not None:
            self._unbook(prev)
        self._book(r)

    def forget(self, job_id: str) -> None:
        """Drop what is remembered of an ended job (its release), once past the keep window."""
        self.released.discard(job_id)
        self.degraded.pop(job_id, None)

    def note_degraded(self, job_id: str, revision: int) -> None:
        if job_id not in self.released and revision > self.degraded.get(job_id, 0):
            self.degraded[job_id] = revision

    def _supersede(self, e: PlacementDecided) -> bool:
        prev = self.reservations.get(e.job_id)
        if prev is not None and e.revision <= prev.revision:
            return False
        if prev is not None:
            self._unbook(prev)
        self._book(_booking(e, prev))
        return True

    def _book(self, r: Reservation) -> None:
        self.reservations[r.job_id] = r
        self._apply(r, +1)
        if r.decision is not None and len(r.replicas) < r.decision.wanted:
            self.short.add(r.job_id)
        elif self.short:
            self.short.discard(r.job_id)

    def _unbook(self, r: Reservation) -> None:
        del self.reservations[r.job_id]
        if self.short:
            self.short.discard(r.job_id)
        self._apply(r, -1)

    def _apply(self, r: Reservation, sign: int) -> None:
        res = r.resources
        job_id = r.job_id
        holders = self.holders
        for nid in r.node_ids:
            jobs = holders.get(nid)
            if jobs is None:
                jobs = holders[nid] = {}
            n = jobs.get(job_id, 0) + sign
            if n > 0:
                jobs[job_id] = n
            else:
                del jobs[job_id]
            node = self.nodes.get(nid)
            if not jobs:
                del holders[nid]
                if node is None:
                    self.unheard.discard(nid)
            elif node is None:
                self.unheard.add(nid)
            if node is None or node.key is None or node.lost or nid in self.evacuate:  # not an active node
                self._leaving_changed(nid)
            if node is None:  # decided before this node's status arrived (e.g. during replay)
                self._orphan.setdefault(nid, []).append((sign * res.cpu, sign * res.memory_mb, sign * res.gpu))
                continue
            node.reserved_cpu += sign * res.cpu
            node.reserved_memory_mb += sign * res.memory_mb
            node.reserved_gpu += sign * res.gpu
            node.refresh()
            if node.key is not None:
                self._move(node)
