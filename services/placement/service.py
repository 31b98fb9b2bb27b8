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

Start-up order (``__main__``): node snapshot, drain facts, ledger replay, then the decider,
the retry loop, the fleet loop and the job consumer, so no job is decided on a ledger that
has not caught up.
"""

from __future__ import annotations

import asyncio

import msgspec

from schemas import events as ev
from schemas import subjects as s
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

__all__ = ["Placement"]

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
        """Rebuild the ledger from PLACEMENTS and keep following it; choose the commit mode
        from the stream's replica count (atomic batches when replicated)."""
        info = await self.rt.js.stream_info(s.PLACEMENTS.name)
        self.decider.atomic = (info.config.num_replicas or 1) > 1
        sub = await self.ledger.follow(self.rt.js, info.state.last_seq)
        self.decider.tail = self.ledger.applied_seq
        return sub

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
