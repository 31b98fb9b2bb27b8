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

Re-placements (:meth:`Decider.move`) go through the same chain: the job's next revision
(:mod:`services.placement.moves`) and, when replicas fit nowhere, its ``placement.degraded``.
A refused one is undone (the previous revision's reservation restored exactly), the ledger
catches up, and the job is evaluated again: another instance may have moved it already, or
it was released, and then there is nothing to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import structlog

from schemas import events as ev
from schemas import subjects as s
from services.placement import quotas as q
from services.placement.first import Stored, failed, first_decision, too_late
from services.placement.ledger import Ledger, shrinks
from services.placement.moves import events_of, replan
from services.placement.ports import Chain, Clock
from services.placement.requests import Pending
from services.placement.requests import Request as _Request
from services.placement.scaling import rescale_dedicated, rescale_shared
from services.placement.state import Reservation, World
from services.runtime.config import InstanceType
from services.runtime.publisher import MAX_ATOMIC_BATCH, WRONG_LAST_MSG_ID, Ack, WrongLastSequence

__all__ = ["Decider", "Pending"]

log = structlog.get_logger()


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
        preemption: bool = True,
        quotas: q.QuotaBook | None = None,
    ) -> None:
        self.world = world
        self.accounts = ledger.accounts
        self.quotas = quotas or q.QuotaBook()
        """Each tenant's quota (§8.4), checked against ``accounts`` plus this chain's decisions."""
        self.ledger = ledger
        self.decided = ledger.decided  # the ledger's sets, never rebound
        self.ended = ledger.ended
        self.chain = chain
        self.clock = clock
        self.ttl = ttl
        self.top = top_candidates
        self.instance_types = instance_types
        self.preemption = preemption
        """``[placement] preemption``: a job that fits nowhere may evict lower-priority replicas."""
        self.atomic = False
        """Commit as atomic batches: on a replicated PLACEMENTS (see ``Publisher.publish_chain``)."""
        self.tail = 0
        """The last PLACEMENTS sequence known to be stored (own acks run ahead of the ledger)."""
        self.stats = {"decisions": 0, "commits": 0, "conflicts": 0, "revisions": 0, "degraded": 0}
        self.quota_waits = 0
        """Decisions put off because the job's tenant was at a concurrent quota."""
        self._delta: dict[str, q.Share] = {}
        """What the chain being built adds to each tenant's stored usage."""
        self._queue: list[_Request] = []
        self._moves: dict[str, _Request] = {}
        """Re-placements queued and not yet taken into a batch, by job id."""
        self._wake = asyncio.Event()
        self.instance = uuid.uuid4().hex[:12]
        """This instance's part of every message id it commits (see :func:`attempt_ids`)."""
        self.attempts = 0
        """Chains published so far: the other part."""

    async def decide(self, p: Pending, *, final: bool = False) -> str:
        """Queue ``p`` for the decider; returns "decided", "failed", "already" or "pending".

        Raises when the decision could not be stored (the caller's delivery is then
        nakked or, for a held job, retried on the next pass)."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(p, p.event.job_id, final, fut))
        self._wake.set()
        return await fut

    def scale(self, job_id: str, replicas: int) -> asyncio.Future[str]:
        """Queue a resize of a placed job (``job.scale``). The future's outcome is "scaled" (a
        new revision stored, with its ``placement.degraded`` when replicas fit nowhere) or
        "nothing" (it has that many already, or it is released or unknown)."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(None, job_id, False, fut, replicas))
        self._wake.set()
        return fut

    def move(self, job_id: str) -> asyncio.Future[str]:
        """Queue a re-placement of a placed shared job (once while it waits for a batch): its
        replicas on leaving nodes move, its missing ones are tried again. The future's outcome
        is "moved" (a new revision stored), "degraded" (only a ``placement.degraded``) or
        "nothing" (nothing to change, or the job is not ours to move: released, unknown)."""
        r = self._moves.get(job_id)
        if r is None:
            r = self._moves[job_id] = _Request(None, job_id, False, asyncio.get_running_loop().create_future())
            self._queue.append(r)
            self._wake.set()
        return r.future

    async def run(self, stop: asyncio.Event) -> None:
        """Group-commit whatever is queued until ``stop`` is set and the queue is empty."""
        while not (stop.is_set() and not self._queue):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)
            self._wake.clear()
            cut, size = 0, 0
            for r in self._queue:  # a re-placement may take two messages (decided, degraded)
                size += 1 if r.pending is not None else 2
                if size > MAX_ATOMIC_BATCH:
                    break
                cut += 1
            batch, self._queue = self._queue[:cut], self._queue[cut:]
            for r in batch:
                if self._moves.get(r.job_id) is r:
                    del self._moves[r.job_id]
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

    def _used(self, tenant: str) -> q.Share:
        """``tenant``'s usage as stored, plus this chain's decisions so far."""
        used = self.accounts.used(tenant)
        return used + self._delta[tenant] if tenant in self._delta else used

    def _over_quota(self, e: ev.JobAccepted) -> str | None:
        quota = self.quotas.quota(e.tenant)
        if quota == q.UNLIMITED:
            return None
        return q.over_quota(e.tenant, quota, self._used(e.tenant), q.share_of_spec(e.spec))

    def _cap(self, res: Reservation) -> tuple[int, str] | None:
        """How many replicas ``res``'s job may have placed within its tenant's quota."""
        d = res.decision
        if d is None:
            return None
        quota = self.quotas.quota(d.tenant)
        if quota == q.UNLIMITED:
            return None
        return q.cap(d.tenant, quota, self._used(d.tenant), len(res.replicas), q.per_replica(res.resources))

    def _count(self, outs: list[Stored]) -> None:
        """Add what ``outs`` (booked locally, not stored yet) change to this chain's usage."""
        for out in outs:
            if isinstance(out, ev.PlacementDecided):
                more = q.share_of(out) - self.accounts.share(out.job_id)
                self._delta[out.tenant] = self._delta.get(out.tenant, q.NOTHING) + more

    def _decision(self, p: Pending, final: bool, busy: set[str]) -> list[Stored] | None:
        """Decide on the local ledger (reserving when placed); None while it should wait
        (:func:`services.placement.first.first_decision`, preempting when it may), or while its
        tenant is at a concurrent quota (§8.4): then it fails at its deadline with that reason."""
        if p.event.job_id in self.ended:
            return [too_late(p.event)]
        why = self._over_quota(p.event)
        if why is not None:
            self.quota_waits += 1
            if not final:
                return None
            total = len(self.world.nodes)
            return [failed(p.event, why, total, ev.Excluded(quota=total))]
        return first_decision(
            p.event,
            self.world,
            self.clock.monotonic(),
            ttl=self.ttl,
            top=self.top,
            instance_types=self.instance_types,
            preemption=self.preemption,
            final=final,
            busy=busy,
        )

    def _events(self, r: _Request, busy: set[str]) -> list[Stored] | str:
        """What to store for ``r`` (booked locally), or its outcome when there is nothing to store."""
        if r.pending is not None:
            if r.job_id in self.decided:
                return "already"
            out = self._decision(r.pending, r.final, busy)
            return "pending" if out is None else out
        if r.replicas is not None:
            return self._rescale(r.job_id, r.replicas)
        res = self.world.reservations.get(r.job_id)
        if res is None:  # released, dedicated, or never decided
            return "nothing"
        plan = replan(res, self.world, self.clock.monotonic(), self.ttl, self.top, cap=self._cap(res))
        if plan is None:
            return "nothing"
        moved = events_of(res, plan)
        for e in moved:
            if isinstance(e, ev.PlacementDecided):
                self.world.decide_locally(e)
        return list(moved)

    def _rescale(self, job_id: str, replicas: int) -> list[Stored] | str:
        """A ``job.scale`` of a decided job, on the local ledger (shared: booked tentatively)."""
        if job_id in self.world.released:
            return "nothing"
        d = self.ledger.dedicated.get(job_id)
        if d is not None:
            out = rescale_dedicated(d, replicas)
            return "nothing" if out is None else [out]
        res = self.world.reservations.get(job_id)
        if res is None:
            return "nothing"
        outs = rescale_shared(res, replicas, self.world, self.clock.monotonic(), self.ttl, self.top, cap=self._cap(res))
        for e in outs:
            if isinstance(e, ev.PlacementDecided):
                self.world.decide_locally(e)
        return list(outs) or "nothing"

    def _stored(self, out: Stored) -> None:
        match out:
            case ev.PlacementDecided():
                self.accounts.decided(out)
                if out.cluster == "dedicated":
                    self.ledger.note_dedicated(out)  # the next resize builds on it at once
                elif shrinks(out):
                    self.ledger.freed()
                self.world.confirm(out.job_id)
                self.decided.add(out.job_id)
                self.stats["decisions" if out.revision <= 1 else "revisions"] += 1
                log.info(s.PLACEMENT_DECIDED, job_id=out.job_id, revision=out.revision, changes=len(out.changes))
            case ev.PlacementDegraded():
                self.world.note_degraded(out.job_id, out.revision)
                self.stats["degraded"] += 1
                log.info(s.PLACEMENT_DEGRADED, job_id=out.job_id, revision=out.revision, missing=out.missing)
            case _:
                self.decided.add(out.job_id)
                self.stats["decisions"] += 1
                log.info(s.PLACEMENT_FAILED, job_id=out.job_id)

    def _undo(self, out: Stored) -> None:
        """Take back a decision the stream refused: restore the job's previous reservation."""
        if isinstance(out, ev.PlacementDecided):
            self.world.undo(out.job_id)

    async def _commit(self, batch: list[_Request]) -> None:
        """Decide ``batch`` and store it as chains until every request is resolved or failed."""
        todo = sorted(batch, key=self._order)
        while todo:
            chain: list[tuple[_Request, Stored]] = []
            later: list[_Request] = []
            jobs: set[str] = set()
            self._delta = {}
            for r in todo:
                if r.job_id in jobs:  # one revision per job and chain: the next builds on it once stored
                    later.append(r)
                    continue
                outs = self._events(r, jobs)
                if isinstance(outs, str):
                    r.resolve(outs)
                else:
                    jobs.add(r.job_id)
                    jobs.update(out.job_id for out in outs)  # a preemption's victims too
                    self._count(outs)
                    chain.extend((r, out) for out in outs)
            if not chain:
                if not later:
                    return
                todo = later
                continue
            base = max(self.tail, self.ledger.applied_seq)
            self.attempts += 1
            events = [out for _, out in chain]
            ids = attempt_ids(events, f"{self.instance}.{self.attempts}")
            results = await self.chain.publish_chain(events, base, atomic=self.atomic, msg_ids=ids)
            self.stats["commits"] += 1
            redo: dict[int, _Request] = {}
            outcome: dict[int, str] = {}
            behind, ask = 0, False
            for i, ((r, out), res) in enumerate(zip(chain, results, strict=True)):
                if isinstance(res, Ack) and not res.duplicate:
                    self.tail = max(self.tail, res.seq)
                    self._stored(out)
                    outcome.setdefault(id(r), _outcome(r, out))
                    continue
                self._undo(out)
                if isinstance(res, Ack):  # decided before (a crash, or another instance): the stream's stands
                    behind = max(behind, res.seq)
                    redo[id(r)] = r
                elif isinstance(res, WrongLastSequence):
                    # a last-msg-id refusal passed the sequence check, made first; a duplicate in an
                    # atomic batch does not say where the stream is: ask it, once
                    known = base + i if res.err_code == WRONG_LAST_MSG_ID else res.last_seq
                    behind, ask = max(behind, known), ask or not known
                    redo[id(r)] = r
                else:
                    r.fail(res)
            for r, _ in chain:
                if id(r) not in redo and id(r) in outcome:
                    r.resolve(outcome[id(r)])
            if redo:
                if ask:
                    behind = max(behind, await self.chain.last_seq())
                self.stats["conflicts"] += len(redo)
                log.debug("placement conflict; catching up", jobs=len(redo), behind=behind)
                await self.ledger.catch_up(behind)
                self.tail = max(self.tail, self.ledger.applied_seq)
            todo = sorted([*redo.values(), *later], key=self._order)

    def _order(self, r: _Request) -> tuple[int, int, int, str]:
        """Re-placements first (running work that lost its node), then by priority, then
        submission order."""
        if r.pending is None:  # a re-placement, then a resize (in the order asked) of the same priority
            res = self.world.reservations.get(r.job_id)
            prio = res.decision.priority if res is not None and res.decision is not None else 0
            return (0, -prio, 0 if r.replicas is None else 1, r.job_id)
        return (1, -r.pending.event.spec.priority, r.pending.order, "")


def attempt_ids(events: list[Stored], attempt: str) -> list[str]:
    """The ``Nats-Msg-Id`` of each message of one chain: its event id and the attempt.

    Two instances deciding the same job (one stalled past ack_wait) build events with the same
    deterministic ``event_id``; were that the message id, the other's copy could satisfy our
    chain's ``Nats-Expected-Last-Msg-Id`` and let a message decided on a stale ledger through.
    Unique per attempt, only our own previous message satisfies it; a re-publish of the same
    attempt (same ids) is still deduplicated by the stream. Consumers deduplicate by the payload's
    ``event_id``, which is unchanged."""
    return [f"{e.event_id}~{attempt}" for e in events]


def _outcome(r: _Request, out: Stored) -> str:
    if r.pending is not None:
        return "decided" if isinstance(out, ev.PlacementDecided) else "failed"
    if r.replicas is not None:
        return "scaled"
    return "moved" if isinstance(out, ev.PlacementDecided) else "degraded"
