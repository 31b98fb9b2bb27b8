"""The placement service's composition root: builds the parts and wires them to NATS.

- :class:`~services.placement.nodes.NodeFeed`: node statuses into the node table;
- :class:`~services.placement.ledger.Ledger`: PLACEMENTS replayed into the reservation
  ledger, and followed;
- :class:`~services.placement.decider.Decider`: the one writer of decisions, behind the
  :class:`~services.placement.ports.Chain` and :class:`~services.placement.ports.Clock` ports;
- :class:`~services.placement.jobs.Jobs`: accepted jobs from the durable ``placement``
  consumer, held while they do not fit, retried, failed at their deadline;
- :class:`~services.placement.drains.Drains`: ``node.drain``/``node.undrain`` and the
  ``node.draining`` facts;
- :class:`~services.placement.fleet.Fleet`: lost and drained nodes' jobs, and degraded
  jobs, queued for re-placement with the decider;
- :class:`~services.placement.scales.Scales`: ``job.scale_requested`` from the durable
  ``placement-scales`` consumer, made revisions by the decider;
- :class:`~services.placement.plan.Planner`: the ``placement.plan`` endpoint;
- :class:`~services.placement.tenants.Tenants`: tenants' quotas (the ``QUOTAS`` bucket,
  ``quota.set``/``quota.get``/``tenant.usage``) and the compute-budget check (§8.4).

The ledger starts from its snapshot (``SNAPSHOTS``, :mod:`~services.placement.snapshot`) plus
the tail of PLACEMENTS after it, and is saved again every ``retention.snapshot_every_s`` /
``snapshot_every_events`` (``snapshot_loop``) and at a clean shutdown.

Start-up order (``__main__``): node snapshot, drain facts, ledger replay, then the decider,
the retry loop, the fleet loop and the job consumer, so no job is decided on a ledger that
has not caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import structlog

from schemas import events as ev
from schemas import subjects as s
from services.placement import snapshot as snap
from services.placement.decider import Decider
from services.placement.drains import Drains
from services.placement.fleet import Fleet
from services.placement.jobs import Jobs
from services.placement.ledger import Ledger
from services.placement.nodes import NodeFeed
from services.placement.plan import Planner
from services.placement.ports import Clock, PlacementsStream, SystemClock
from services.placement.quotas import QuotaBook
from services.placement.scales import Scales
from services.placement.scales import decoder as _scale_decoder
from services.placement.state import World
from services.placement.tenants import Tenants
from services.runtime.app import Runtime
from services.runtime.consumer import Consumer
from services.runtime.publisher import Publisher
from services.runtime.snapshots import Snapshots, due

__all__ = ["Placement"]

log = structlog.get_logger()

_CREATED = f"{s.PLACEMENTS.name}.created"
"""In a snapshot's ``seqs``: when the stream it was folded from was created (epoch seconds), so a
snapshot of a deleted and recreated PLACEMENTS is never loaded onto the new one."""

_accepted_decoder = msgspec.json.Decoder(ev.JobAccepted)
_SCALE_GRACE_S = 10.0
"""How long past the placement deadline a scale request waits for its job's decision (a job
accepted before the request is decided or failed by its deadline; one rejected never is)."""


class Placement:
    """One placement instance: its parts, built from ``rt`` (``clock`` for tests)."""

    def __init__(self, rt: Runtime, clock: Clock | None = None) -> None:
        self.rt = rt
        clock = clock or SystemClock()
        t = rt.config.timeouts
        capacity_changed = asyncio.Event()
        self.world = World()
        self.capacity_changed = capacity_changed
        self.quotas = QuotaBook(config=dict(rt.config.tenants))
        self.nodes = NodeFeed(self.world, clock, t.node_ttl_s, capacity_changed)
        self.ledger = Ledger(self.world, capacity_changed)
        self.decider = Decider(
            self.world,
            self.ledger,
            PlacementsStream(rt.js),
            clock,
            ttl=t.node_ttl_s,
            top_candidates=rt.config.placement.top_candidates,
            instance_types=rt.config.instance_types,
            preemption=rt.config.placement.preemption,
            quotas=self.quotas,
        )
        self.fleet = Fleet(self.world, self.decider.move, clock, lost_s=t.lost_after_s)
        self.tenants = Tenants(self.quotas, self.ledger.accounts, clock, self.quota_changed)
        self.publisher = Publisher(rt.js)
        self.jobs = Jobs(
            self.ledger,
            self.decider,
            clock,
            t.placement_deadline_s,
            capacity_changed,
            over_budget=self.tenants.over_budget,
            reject=self.reject,
        )
        self.drains = Drains(self.world, self.publisher.publish, self.fleet.wake, capacity_changed)
        self.scales = Scales(self.ledger, self.decider.scale, clock, wait_s=t.placement_deadline_s + _SCALE_GRACE_S)
        self.planner = Planner(
            self.world,
            clock,
            rt.config.defaults,
            rt.config.instance_types,
            ttl=t.node_ttl_s,
            top_candidates=rt.config.placement.top_candidates,
            preemption=rt.config.placement.preemption,
        )
        self.decide = self.decider.decide
        self.move = self.decider.move
        self.stats = self.decider.stats
        self.retention = rt.config.retention
        self.snapshots: Snapshots | None = None
        self.restart: dict[str, int | bool] = {"from_snapshot": False, "folded": 0}
        """How the last start rebuilt the ledger: from a snapshot or not, and how many events it folded."""
        self._saved_folded = 0
        self._saved_at = time.monotonic()
        self._created = 0

    def quota_changed(self) -> None:
        """A tenant's quota changed: try the jobs waiting at a quota, and degraded jobs, again."""
        self.world.epoch += 1
        self.capacity_changed.set()
        self.fleet.wake.set()

    async def reject(self, e: ev.JobAccepted, reason: str) -> None:
        """``job.rejected`` for ``e``'s job (its compute budget): stored once, whoever retries."""
        await self.publisher.publish(
            ev.JobRejected(event_id=ev.event_id_for(e.job_id, s.JOB_REJECTED), job_id=e.job_id, reason=reason)
        )

    async def follow_quotas(self, timeout: float = 60) -> asyncio.Task[None]:
        """Bind the ``QUOTAS`` bucket and apply its values (returns once the stored ones are),
        then keep following it until ``rt.stop``."""
        info = await self.rt.js.stream_info(s.PLACEMENTS.name)
        await self.tenants.bind(self.rt.js, replicas=info.config.num_replicas or 1)
        ready = asyncio.Event()
        task = asyncio.create_task(self.tenants.follow(ready, self.rt.stop))
        await asyncio.wait_for(ready.wait(), timeout)
        return task

    async def follow_drains(self, timeout: float = 60) -> object:
        return await self.drains.follow(self.rt.js, timeout)

    async def follow_nodes(self, timeout: float = 60) -> None:
        await self.nodes.follow(self.rt.nc, self.rt.js, timeout)

    async def replay_ledger(self) -> object:
        """Rebuild the ledger (from its snapshot and the tail after it, else from PLACEMENTS'
        start) and keep following it; choose the commit mode from the stream's replica count
        (atomic batches when replicated)."""
        info = await self.rt.js.stream_info(s.PLACEMENTS.name)
        replicas = info.config.num_replicas or 1
        self.decider.atomic = replicas > 1
        self.snapshots = await Snapshots.open(self.rt.js, snap.OWNER, snap.FORMAT, replicas=replicas)
        self._created = int(info.created.timestamp()) if info.created is not None else 0
        start = await self._load_snapshot(self.snapshots, info.state.first_seq, info.state.last_seq)
        sub = await self.ledger.follow(self.rt.js, info.state.last_seq, start=start)
        self.decider.tail = self.ledger.applied_seq  # the chain's base: the stream's real last sequence
        self.restart = {"from_snapshot": start > 1, "folded": self.ledger.folded}
        self._saved_folded, self._saved_at = self.ledger.folded, time.monotonic()
        return sub

    async def _load_snapshot(self, snapshots: Snapshots, first_seq: int, last_seq: int) -> int:
        """Load the ledger's snapshot if it is usable; returns the sequence to follow from."""
        loaded = await snapshots.load()
        if loaded is None:
            return 1
        seq = loaded.seqs.get(s.PLACEMENTS.name, 0)
        body = snap.decode(loaded.body)
        why = None
        if body is None:
            why = "body undecodable"
        elif seq > last_seq or loaded.seqs.get(_CREATED, self._created) != self._created:
            why = "the snapshot is of another PLACEMENTS (the stream was recreated)"
        elif first_seq > seq + 1:
            why = "the tail after the snapshot has left the stream (retention)"
        if body is None or why is not None:
            log.warning("ledger snapshot not used; replaying PLACEMENTS from its start", why=why, seq=seq)
            return 1
        snap.restore(body, self.ledger)
        self.ledger.applied_seq = seq
        log.info("ledger snapshot loaded", seq=seq, reservations=len(self.world.reservations))
        return seq + 1

    async def save_snapshot(self) -> bool:
        """Save the ledger's snapshot now if no local decision is in flight; False if not saved."""
        if self.snapshots is None or not self.world.settled():
            return False
        folded, seq = self.ledger.folded, self.ledger.applied_seq
        body = snap.encode(snap.capture(self.ledger))  # synchronously: the state at ``seq``
        await self.snapshots.save(body, {s.PLACEMENTS.name: seq, _CREATED: self._created})
        self._saved_folded, self._saved_at = folded, time.monotonic()
        return True

    async def snapshot_loop(self, every: float = 0.5) -> None:
        """Until ``rt.stop``: forget jobs ended more than ``ended_keep_s`` ago, and save the
        snapshot when due (``snapshot_every_s`` / ``snapshot_every_events``)."""
        r = self.retention
        while not self.rt.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rt.stop.wait(), every)
            if self.rt.stop.is_set():
                break  # the last save is ``final_snapshot``'s, once the decider is done
            now_s = time.time()
            self.ledger.forget(now_s - r.ended_keep_s, now_s - r.events_max_age_s - r.ended_keep_s)
            now = time.monotonic()
            if due(
                self.ledger.folded - self._saved_folded,
                self._saved_at,
                now,
                r.snapshot_every_s,
                r.snapshot_every_events,
            ):
                try:
                    await self.save_snapshot()
                except Exception as e:  # the next pass tries again; the streams still hold everything
                    log.warning("ledger snapshot not saved", error=repr(e))

    async def final_snapshot(self) -> None:
        """At a clean shutdown (the decider done): save if anything was folded since the last."""
        if self.ledger.folded > self._saved_folded:
            try:
                await self.save_snapshot()
            except Exception as e:
                log.warning("ledger snapshot not saved at shutdown", error=repr(e))

    async def decider_loop(self) -> None:
        await self.decider.run(self.rt.stop)

    async def retry_loop(self) -> None:
        await self.jobs.retry_loop(self.rt.stop)

    async def fleet_loop(self) -> None:
        await self.fleet.run(self.rt.stop)

    def consumer(self) -> Consumer[ev.JobAccepted]:
        return Consumer(self.rt.js, s.PLACEMENT_JOBS, _accepted_decoder, self.jobs.on_accepted, service="placement")

    def scale_consumer(self) -> Consumer[ev.JobScaleRequested]:
        return Consumer(
            self.rt.js, s.PLACEMENT_SCALES, _scale_decoder, self.scales.on_scale, service="placement", in_order=True
        )
