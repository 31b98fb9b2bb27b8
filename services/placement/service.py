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
- Several instances (scale-out): every decision is committed to PLACEMENTS with
  ``Nats-Expected-Last-Sequence``, i.e. only if the stream holds nothing this instance
  has not applied to its ledger (optimistic concurrency, as in Omega, with the stream as
  the one shared state). Decisions are group-committed: one decider task takes every
  job waiting for a decision, decides them in priority/submission order on the local
  ledger and publishes them as a chain that the stream stores only right after the
  ledger's last sequence, and nothing from its first refused message on (pipelined,
  each message expecting the last sequence and its predecessor's id; on a replicated
  stream, one atomic batch; at most ``MAX_ATOMIC_BATCH`` decisions per chain). On a
  conflict (another instance, or a release, got in between; or a job decided before) the
  refused decisions are undone, the ledger catches up to the stream, and those jobs are
  decided again. So no node is ever booked on a stale ledger, whatever the number of
  instances.
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
from services.runtime import direct
from services.runtime.app import Runtime
from services.runtime.consumer import Consumer
from services.runtime.delivery import Delivery, stream_sequence
from services.runtime.publisher import MAX_ATOMIC_BATCH, WRONG_LAST_MSG_ID, Ack, Publisher, WrongLastSequence

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


@dataclass
class _Request:
    pending: Pending
    final: bool
    future: asyncio.Future[str]

    def resolve(self, outcome: str) -> None:
        if not self.future.done():
            self.future.set_result(outcome)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Placement:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.world = World()
        self.publisher = Publisher(rt.js)
        self.pending: dict[str, Pending] = {}
        self.decided: set[str] = set()
        self.ended: set[str] = set()
        """Jobs released (ended, e.g. cancelled) before any decision: never reserve for them."""
        self._capacity_changed = asyncio.Event()
        self._queue: list[_Request] = []
        self._wake = asyncio.Event()
        self._advanced = asyncio.Event()
        self.applied_seq = 0
        """The last PLACEMENTS sequence applied to the ledger by the follower."""
        self.tail = 0
        """The last PLACEMENTS sequence known to be stored (own acks run ahead of the follower)."""
        self.stats = {"decisions": 0, "commits": 0, "conflicts": 0}
        self.atomic = False
        """Commit as atomic batches: on a replicated PLACEMENTS (see ``Publisher.publish_chain``)."""
        t = rt.config.timeouts
        self.ttl = t.node_ttl_s
        self.deadline_s = t.placement_deadline_s

    # --- inputs -------------------------------------------------------------
    def on_node(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None = None) -> None:
        try:
            applied = absorb(self.world, data, datetime.now(UTC), time.monotonic(), self.ttl)
        except (msgspec.DecodeError, RecursionError) as e:  # msgspec recurses on deep nesting
            log.warning("bad node status ignored", subject=subject.decode(errors="replace"), error=repr(e)[:500])
            return
        if applied:
            self._capacity_changed.set()

    async def on_ledger(self, msg: Msg) -> None:
        seq = stream_sequence(msg.reply)
        if seq > self.applied_seq:
            self.applied_seq = seq
            self._advanced.set()
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
                if event.job_id not in self.decided:  # a reservation made after this would never be freed
                    self.ended.add(event.job_id)
                    self._capacity_changed.set()
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
        order = stream_sequence(d.msg.reply)  # submission order, also after a restart
        p = Pending(event, d, time.monotonic() + self.deadline_s - max(0.0, age), order)
        if await self.decide(p) != "pending":
            return
        d.hold()
        self.pending[event.job_id] = p
        bound.info("pending: no fit yet", pending=len(self.pending))

    # --- decisions ----------------------------------------------------------
    async def decide(self, p: Pending, *, final: bool = False) -> str:
        """Queue ``p`` for the decider; returns "decided", "failed", "already" or "pending".

        Raises when the decision could not be stored (the caller's delivery is then
        nakked or, for a held job, retried on the next pass)."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(p, final, fut))
        self._wake.set()
        return await fut

    async def decider_loop(self) -> None:
        """The single writer of decisions: group-commits whatever is queued."""
        while not (self.rt.stop.is_set() and not self._queue):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)
            self._wake.clear()
            batch, self._queue = self._queue[:MAX_ATOMIC_BATCH], self._queue[MAX_ATOMIC_BATCH:]
            if self._queue:
                self._wake.set()  # the rest goes in the next chain
            if not batch:
                continue
            try:
                await self._commit(batch)
            except Exception as e:  # e.g. the follower is stuck: fail this batch, keep going
                log.warning("decision batch failed", size=len(batch), error=repr(e))
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)

    def _decision(self, p: Pending, final: bool) -> ev.PlacementDecided | ev.PlacementFailed | None:
        """Decide on the local ledger (reserving when placed); None while it should wait."""
        e = p.event
        spec = e.spec
        top = self.rt.config.placement.top_candidates
        if e.job_id in self.ended:
            return ev.PlacementFailed(
                event_id=ev.event_id_for(e.job_id, s.PLACEMENT_FAILED),
                job_id=e.job_id,
                reason="job ended before it was placed",
            )
        if spec.cluster == "dedicated":
            result = place_dedicated(spec, self.rt.config.instance_types, top)
        else:
            result = place(spec, self.world, time.monotonic(), self.ttl, top, explain_failure=final)
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
                max_runtime_s=spec.max_runtime_s,
            )
            self.world.apply_decided(out)  # the next decision of the batch sees it
            return out
        if final or spec.cluster == "dedicated":
            assert isinstance(result, NotPlaced)
            return ev.PlacementFailed(
                event_id=ev.event_id_for(e.job_id, s.PLACEMENT_FAILED),
                job_id=e.job_id,
                reason=result.reason,
                nodes_total=result.nodes_total,
                excluded=result.excluded,
            )
        return None

    def _undo(self, out: ev.PlacementDecided | ev.PlacementFailed) -> None:
        if isinstance(out, ev.PlacementDecided):
            self.world.release(out.job_id)
            self.world.released.discard(out.job_id)

    async def _commit(self, batch: list[_Request]) -> None:
        todo = sorted(batch, key=lambda r: (-r.pending.event.spec.priority, r.pending.order))
        while todo:
            chain: list[tuple[_Request, ev.PlacementDecided | ev.PlacementFailed]] = []
            for r in todo:
                if r.pending.event.job_id in self.decided:
                    r.resolve("already")
                    continue
                out = self._decision(r.pending, r.final)
                if out is None:
                    r.resolve("pending")
                else:
                    chain.append((r, out))
            if not chain:
                return
            base = max(self.tail, self.applied_seq)
            results = await self.publisher.publish_chain([out for _, out in chain], base, atomic=self.atomic)
            self.stats["commits"] += 1
            redo: list[_Request] = []
            behind, ask = 0, False
            for i, ((r, out), res) in enumerate(zip(chain, results, strict=True)):
                if isinstance(res, Ack) and not res.duplicate:
                    self.tail = max(self.tail, res.seq)
                    self.decided.add(out.job_id)
                    self.stats["decisions"] += 1
                    log.info(out.__struct_config__.tag, job_id=out.job_id)
                    r.resolve("decided" if isinstance(out, ev.PlacementDecided) else "failed")
                    continue
                self._undo(out)
                if isinstance(res, Ack):  # decided before (a crash, or another instance): the stream's stands
                    behind = max(behind, res.seq)
                    redo.append(r)
                elif isinstance(res, WrongLastSequence):
                    # a last-msg-id refusal passed the sequence check, made first; a duplicate in an
                    # atomic batch does not say where the stream is: ask it, once
                    known = base + i if res.err_code == WRONG_LAST_MSG_ID else res.last_seq
                    behind, ask = max(behind, known), ask or not known
                    redo.append(r)
                else:
                    r.fail(res)
            if redo:
                if ask:
                    behind = max(behind, await self._stream_last_seq())
                self.stats["conflicts"] += len(redo)
                log.debug("placement conflict; catching up", jobs=len(redo), behind=behind)
                await self._catch_up(behind)
                self.tail = max(self.tail, self.applied_seq)
            todo = redo

    async def _stream_last_seq(self) -> int:
        return int((await self.rt.js.stream_info(s.PLACEMENTS.name)).state.last_seq)

    async def _catch_up(self, seq: int, timeout: float = 10.0) -> None:
        """Wait until the follower has applied the stream up to ``seq``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.applied_seq < seq:
            self._advanced.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"ledger stuck at {self.applied_seq}, stream at {seq}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), left)

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
            due = [p for p in self.pending.values() if changed or now >= p.deadline]
            outcomes = await asyncio.gather(
                *(self.decide(p, final=now >= p.deadline) for p in due), return_exceptions=True
            )
            for p, outcome in zip(due, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    log.warning("decision not stored; will retry", job_id=p.event.job_id, error=repr(outcome))
                elif outcome != "pending" and self.pending.pop(p.event.job_id, None) is not None:
                    await p.delivery.ack()
            if now - last_ping > s.PLACEMENT_JOBS.ack_wait_s / 3:
                last_ping = now
                for p in list(self.pending.values()):
                    await p.delivery.in_progress()
            if changed:
                await asyncio.sleep(0.05)  # coalesce bursts of node updates

    # --- start-up -----------------------------------------------------------
    async def replay_ledger(self) -> object:
        """Follow PLACEMENTS from the start (one ordered consumer, so stream order is kept);
        returns once the ledger has caught up with the stream as it was at start."""
        js = self.rt.js
        info = await js.stream_info(s.PLACEMENTS.name)
        last = info.state.last_seq
        self.atomic = (info.config.num_replicas or 1) > 1
        sub = await js.subscribe(
            "",
            stream=s.PLACEMENTS.name,
            ordered_consumer=True,
            cb=self.on_ledger,
            deliver_policy=js_api.DeliverPolicy.ALL,
            config=js_api.ConsumerConfig(filter_subjects=list(s.PLACEMENTS.subjects)),
        )
        await self._catch_up(last, timeout=300)
        self.tail = self.applied_seq
        log.info("ledger rebuilt", reservations=len(self.world.reservations), decided=len(self.decided), seq=last)
        return sub

    async def follow_nodes(self, timeout: float = 60) -> None:
        """Node statuses: the NODES stream's last status of each node, then the live ones on a
        core subscription, handed over straight from the read loop. Statuses are state, not
        events: a status lost while disconnected is superseded by the node's next report,
        well within the TTL, without an ordered consumer's work per status. Live statuses
        wait in a buffer until the snapshot is applied, so an older snapshot entry never
        overwrites a newer report."""
        nc, js = self.rt.nc, self.rt.js
        buffered: list[tuple[bytes, bytes]] = []
        loading = True

        def live(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            if loading:
                buffered.append((subject, data))
            else:
                self.on_node(subject, reply, data)

        await direct.subscribe(nc, s.NODE_STATUS_ALL, live)
        await nc.flush()  # subscribed before the snapshot's end is fixed
        state = (await js.stream_info(s.NODES.name)).state
        last = state.last_seq
        done = asyncio.Event()
        if not state.messages:  # nothing to load (the last sequence may be of a purged message)
            done.set()

        async def snapshot(msg: Msg) -> None:
            self.on_node(msg.subject.encode(), b"", msg.data)
            if stream_sequence(msg.reply) >= last:
                done.set()

        sub = await js.subscribe(
            s.NODE_STATUS_ALL,
            stream=s.NODES.name,
            ordered_consumer=True,
            cb=snapshot,
            deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
        )
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:  # go live all the same: the rest report again within their interval
            log.warning("node snapshot incomplete", timeout_s=timeout, nodes=len(self.world.nodes))
        finally:
            await sub.unsubscribe()
        for subject, data in buffered:
            self.on_node(subject, b"", data)
        loading = False
        log.info("node snapshot applied", nodes=len(self.world.nodes), live_while_loading=len(buffered))
        buffered.clear()

    def consumer(self) -> Consumer[ev.JobAccepted]:
        return Consumer(self.rt.js, s.PLACEMENT_JOBS, _accepted_decoder, self.on_accepted, service="placement")
