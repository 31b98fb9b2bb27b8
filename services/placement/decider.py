"""The decider: the one writer of decisions, group-committing them to PLACEMENTS.

Callers queue a job with :meth:`Decider.decide`. One task (:meth:`Decider.run`) takes
every queued job, decides them in priority, then submission order on the local ledger
(reserving as it goes, so each decision sees the ones before it) and stores them as one
chain (:class:`~services.placement.ports.Chain`) that the stream stores only right after
the sequence the ledger is at, and nothing from its first refused message on. At most
``MAX_ATOMIC_BATCH`` decisions go in one chain; the rest wait for the next.

A refused decision (another instance's decision or a release got in first; or the job
was decided before, a duplicate) is undone on the ledger, the ledger catches up to the
stream, and the job is decided again on the new state. So no node is ever booked on a
stale ledger, whatever the number of instances (optimistic concurrency with the stream
as the one shared state). A job released before it was decided gets ``placement.failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from schemas import events as ev
from schemas import subjects as s
from services.placement.engine import NotPlaced, Placed, place, place_dedicated
from services.placement.ledger import Ledger
from services.placement.ports import Chain, Clock
from services.placement.state import World
from services.runtime.config import InstanceType
from services.runtime.delivery import Delivery
from services.runtime.publisher import MAX_ATOMIC_BATCH, WRONG_LAST_MSG_ID, Ack, WrongLastSequence

log = structlog.get_logger()

Decision = ev.PlacementDecided | ev.PlacementFailed


@dataclass
class Pending:
    """An accepted job waiting for a decision, with the delivery to ack once it has one."""

    event: ev.JobAccepted
    delivery: Delivery
    deadline: float
    """On the monotonic clock: when it is tried a last time, with an explanation."""
    order: int
    """Submission order (the JOBS stream sequence), the tie-break after priority."""


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


class Decider:
    def __init__(
        self,
        world: World,
        ledger: Ledger,
        chain: Chain,
        clock: Clock,
        *,
        ttl: float,
        top_candidates: int,
        instance_types: list[InstanceType],
    ) -> None:
        self.world = world
        self.ledger = ledger
        self.decided = ledger.decided  # the ledger's sets, never rebound
        self.ended = ledger.ended
        self.chain = chain
        self.clock = clock
        self.ttl = ttl
        self.top = top_candidates
        self.instance_types = instance_types
        self.atomic = False
        """Commit as atomic batches: on a replicated PLACEMENTS (see ``Publisher.publish_chain``)."""
        self.tail = 0
        """The last PLACEMENTS sequence known to be stored (own acks run ahead of the ledger)."""
        self.stats = {"decisions": 0, "commits": 0, "conflicts": 0}
        self._queue: list[_Request] = []
        self._wake = asyncio.Event()

    async def decide(self, p: Pending, *, final: bool = False) -> str:
        """Queue ``p`` for the decider; returns "decided", "failed", "already" or "pending".

        Raises when the decision could not be stored (the caller's delivery is then
        nakked or, for a held job, retried on the next pass)."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(p, final, fut))
        self._wake.set()
        return await fut

    async def run(self, stop: asyncio.Event) -> None:
        """Group-commit whatever is queued until ``stop`` is set and the queue is empty."""
        while not (stop.is_set() and not self._queue):
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
            except Exception as e:  # e.g. the ledger is stuck: fail this batch, keep going
                log.warning("decision batch failed", size=len(batch), error=repr(e))
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)

    def _decision(self, p: Pending, final: bool) -> Decision | None:
        """Decide on the local ledger (reserving when placed); None while it should wait."""
        e = p.event
        spec = e.spec
        top = self.top
        if e.job_id in self.ended:
            return ev.PlacementFailed(
                event_id=ev.event_id_for(e.job_id, s.PLACEMENT_FAILED),
                job_id=e.job_id,
                reason="job ended before it was placed",
            )
        if spec.cluster == "dedicated":
            result = place_dedicated(spec, self.instance_types, top)
        else:
            result = place(spec, self.world, self.clock.monotonic(), self.ttl, top, explain_failure=final)
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

    def _undo(self, out: Decision) -> None:
        """Take back a decision the stream refused: free its reservation, and forget the
        release so the job can be booked again."""
        if isinstance(out, ev.PlacementDecided):
            self.world.release(out.job_id)
            self.world.released.discard(out.job_id)

    async def _commit(self, batch: list[_Request]) -> None:
        """Decide ``batch`` and store it as chains until every request is resolved or failed."""
        todo = sorted(batch, key=lambda r: (-r.pending.event.spec.priority, r.pending.order))
        while todo:
            chain: list[tuple[_Request, Decision]] = []
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
            base = max(self.tail, self.ledger.applied_seq)
            results = await self.chain.publish_chain([out for _, out in chain], base, atomic=self.atomic)
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
                    behind = max(behind, await self.chain.last_seq())
                self.stats["conflicts"] += len(redo)
                log.debug("placement conflict; catching up", jobs=len(redo), behind=behind)
                await self.ledger.catch_up(behind)
                self.tail = max(self.tail, self.ledger.applied_seq)
            todo = redo
