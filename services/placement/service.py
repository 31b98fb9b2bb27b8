"""Placement service wiring: node table, ledger replay, accepted jobs, pending retries.

- Node status: an ordered consumer on NODES delivering the last status per node and
  then every update. A status whose ``at`` is already older than the TTL is ignored.
- Ledger: ordered consumers replay PLACEMENTS (decided, failed, released) from the start
  and keeps following it; jobs are not consumed until the replay has caught up.
- Jobs: the durable ``placement`` consumer on ``job.accepted``. A job that fits is
  decided and acked once the decision is stored. One that does not is *held*
  unacked (in-progress pings keep it ours), retried whenever capacity changes, and
  failed at its deadline. After a crash the held messages are redelivered, so no
  pending job is forgotten; a redelivered job already decided is just acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import api as js_api

from schemas import events as ev
from schemas import subjects as s
from services.placement.engine import NotPlaced, Placed, place, place_dedicated
from services.placement.state import World
from services.runtime.app import Runtime
from services.runtime.bus import Publisher
from services.runtime.consumer import Consumer, Delivery

log = structlog.get_logger()

_node_decoder = msgspec.json.Decoder(ev.NodeStatus)
_ledger_decoder = msgspec.json.Decoder(ev.PlacementDecided | ev.PlacementFailed | ev.PlacementReleased)
_accepted_decoder = msgspec.json.Decoder(ev.JobAccepted)


def absorb(world: World, data: bytes, wall: datetime, now: float, ttl: float) -> bool:
    """Apply one encoded node status to the table unless it is stale on arrival (``at``
    older than ``ttl`` on the wall clock ``wall``); ``now`` is the monotonic clock.
    Returns whether it was applied; raises ``msgspec.DecodeError`` on a bad payload."""
    status = _node_decoder.decode(data)
    at = status.at if status.at.tzinfo else status.at.replace(tzinfo=UTC)
    if (wall - at).total_seconds() > ttl:
        return False
    world.update_node(status, now)
    return True


@dataclass
class Pending:
    event: ev.JobAccepted
    delivery: Delivery
    deadline: float
    order: int


class Placement:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.world = World()
        self.publisher = Publisher(rt.js)
        self.pending: dict[str, Pending] = {}
        self.decided: set[str] = set()
        self._capacity_changed = asyncio.Event()
        t = rt.config.timeouts
        self.ttl = t.node_ttl_s
        self.deadline_s = t.placement_deadline_s

    # --- inputs -------------------------------------------------------------
    async def on_node(self, msg: Msg) -> None:
        try:
            applied = absorb(self.world, msg.data, datetime.now(UTC), time.monotonic(), self.ttl)
        except msgspec.DecodeError as e:
            log.warning("bad node status ignored", subject=msg.subject, error=str(e))
            return
        if applied:
            self._capacity_changed.set()

    async def on_ledger(self, msg: Msg) -> None:
        try:
            event = _ledger_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        match event:
            case ev.PlacementDecided():
                self.decided.add(event.job_id)
                self.world.apply_decided(event)
            case ev.PlacementFailed():
                self.decided.add(event.job_id)
            case ev.PlacementReleased():
                if self.world.release(event.job_id):
                    self._capacity_changed.set()

    async def on_accepted(self, event: ev.JobAccepted, d: Delivery) -> None:
        bound = log.bind(job_id=event.job_id)
        if event.job_id in self.decided:
            bound.debug("already decided; acking redelivery")
            return
        held = self.pending.get(event.job_id)
        if held is not None:  # redelivered to us while we hold it (a ping came late)
            held.delivery = d
            d.hold()
            return
        submitted = event.submitted_at or event.at
        age = (datetime.now(UTC) - submitted).total_seconds()
        order = d.msg.metadata.sequence.stream  # submission order, also after a restart
        p = Pending(event, d, time.monotonic() + self.deadline_s - max(0.0, age), order)
        if await self._try(p):
            return
        d.hold()
        self.pending[event.job_id] = p
        bound.info("pending: no fit yet", pending=len(self.pending))

    # --- decisions ----------------------------------------------------------
    async def _try(self, p: Pending, *, final: bool = False) -> bool:
        """Decide ``p`` if it fits (or fail it when ``final``); True once decided."""
        e = p.event
        spec = e.spec
        top = self.rt.config.placement.top_candidates
        if spec.cluster == "dedicated":
            result = place_dedicated(spec, self.rt.config.instance_types, top)
        else:
            result = place(spec, self.world, time.monotonic(), self.ttl, top, explain_failure=final)
        out: ev.PlacementDecided | ev.PlacementFailed
        if isinstance(result, Placed):
            out = ev.PlacementDecided(
                event_id=ev.event_id_for(e.job_id, s.PLACEMENT_DECIDED),
                job_id=e.job_id,
                cluster=spec.cluster,
                technology=spec.technology,
                strategy=spec.strategy,
                assignments=result.assignments,
                candidates=result.candidates,
                resources=spec.resources,
            )
            # reserve before the first await so the next decision sees it
            self.world.apply_decided(out)
            self.decided.add(e.job_id)
        elif final or spec.cluster == "dedicated":
            assert isinstance(result, NotPlaced)
            out = ev.PlacementFailed(
                event_id=ev.event_id_for(e.job_id, s.PLACEMENT_FAILED),
                job_id=e.job_id,
                reason=result.reason,
                nodes_total=result.nodes_total,
                excluded=result.excluded,
            )
            self.decided.add(e.job_id)
        else:
            return False
        try:
            await self.publisher.publish(out)
        except Exception:
            # Not stored: undo, and let the job come back (held: nak; inline: raise -> nak).
            self.decided.discard(e.job_id)
            if isinstance(out, ev.PlacementDecided):
                self.world.release(e.job_id)
                self.world.released.discard(e.job_id)
            raise
        log.info(out.__struct_config__.tag, job_id=e.job_id)
        return True

    async def retry_loop(self) -> None:
        """Retry pending jobs when capacity changes; fail them at their deadline."""
        last_ping = time.monotonic()
        while not self.rt.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._capacity_changed.wait(), 0.5)
            if not self.pending:
                self._capacity_changed.clear()
                continue
            changed = self._capacity_changed.is_set()
            self._capacity_changed.clear()
            now = time.monotonic()
            for p in sorted(self.pending.values(), key=lambda p: (-p.event.spec.priority, p.order)):
                final = now >= p.deadline
                if not (changed or final):
                    continue
                try:
                    done = await self._try(p, final=final)
                except Exception as e:
                    log.warning("decision not stored; will retry", job_id=p.event.job_id, error=repr(e))
                    continue
                if done:
                    del self.pending[p.event.job_id]
                    await p.delivery.ack()
            if now - last_ping > s.PLACEMENT_JOBS.ack_wait_s / 3:
                last_ping = now
                for p in list(self.pending.values()):
                    await p.delivery.in_progress()
            if changed:
                await asyncio.sleep(0.05)  # coalesce bursts of node updates

    # --- start-up -----------------------------------------------------------
    async def replay_ledger(self) -> list[object]:
        js = self.rt.js
        subs: list[object] = []
        for subject in (s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.PLACEMENT_RELEASED):
            caught_up = asyncio.Event()

            def make_cb(done: asyncio.Event) -> object:
                async def cb(msg: Msg) -> None:
                    await self.on_ledger(msg)
                    if msg.metadata.num_pending == 0:
                        done.set()

                return cb

            sub = await js.subscribe(
                subject,
                stream=s.PLACEMENTS.name,
                ordered_consumer=True,
                cb=make_cb(caught_up),  # type: ignore[arg-type]
                deliver_policy=js_api.DeliverPolicy.ALL,
            )
            info = await sub.consumer_info()
            if info.num_pending:
                await asyncio.wait_for(caught_up.wait(), 120)
            subs.append(sub)
        log.info("ledger rebuilt", reservations=len(self.world.reservations), decided=len(self.decided))
        return subs

    async def follow_nodes(self) -> object:
        return await self.rt.js.subscribe(
            s.NODE_STATUS_ALL,
            stream=s.NODES.name,
            ordered_consumer=True,
            cb=self.on_node,
            deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
        )

    def consumer(self) -> Consumer[ev.JobAccepted]:
        return Consumer(self.rt.js, s.PLACEMENT_JOBS, _accepted_decoder, self.on_accepted, service="placement")
