"""The follower of PLACEMENTS: the reservation ledger, rebuilt on start and kept current.

One ordered consumer reads the stream from its first message, in stream order, and
applies each event to the ledger:

- ``placement.decided``: the job's reservation is made (a higher revision replaces the
  previous one's, an older or equal one is ignored), and the job is settled; a dedicated
  job's highest revision is kept in ``dedicated`` (no reservation: its instances are its own);
- ``placement.degraded``: knowledge only (the job misses replicas since that revision);
- ``placement.failed``: the job is settled (no reservation);
- ``placement.released``: the job's reservation is freed; a job released before any
  decision (cancelled while pending) is remembered in ``ended`` and never booked.

``applied_seq`` is the stream sequence of the last event applied; :meth:`Ledger.catch_up`
waits until it reaches a given sequence (the decider's conflict path, and start-up). At
start the ledger is loaded from its snapshot (:mod:`services.placement.snapshot`) when there is
one and followed from the sequence after it. Ended jobs (released, failed) are remembered for
``retention.ended_keep_s``, then forgotten (:meth:`Ledger.forget`), except a job released before
any decision: its ``job.accepted`` may still be on its way (placement behind on JOBS, or down), so
it is remembered until the stream can no longer hold that (``retention.events_max_age_s``) or the
``placement.failed`` answering it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from schemas import events as ev
from schemas import subjects as s
from services.placement.quotas import Accounts
from services.placement.state import World
from services.runtime.delivery import stream_sequence

log = structlog.get_logger()

_ledger_decoder = msgspec.json.Decoder(
    ev.PlacementDecided | ev.PlacementFailed | ev.PlacementReleased | ev.PlacementDegraded
)


def shrinks(e: ev.PlacementDecided) -> bool:
    """A revision that removes replicas (a ``job.scale`` down), so frees room."""
    return any(c.to is None and c.reason == "scale" for c in e.changes)


class Ledger:
    """Reservations in ``world``, the settled jobs, and how far the stream has been applied."""

    def __init__(self, world: World, capacity_changed: asyncio.Event) -> None:
        self.world = world
        self.capacity_changed = capacity_changed
        self.decided: set[str] = set()
        """Jobs with a stored decision (``placement.decided`` or ``placement.failed``)."""
        self.ended: set[str] = set()
        """Jobs released (ended, e.g. cancelled) before any decision: never reserve for them."""
        self.dedicated: dict[str, ev.PlacementDecided] = {}
        """The highest stored revision of each live dedicated job (never booked: what a
        ``job.scale`` of it builds on)."""
        self.accounts = Accounts()
        """Each tenant's usage (§8.4), from the same events in the same order."""
        self.applied_seq = 0
        """The last PLACEMENTS sequence applied to the ledger."""
        self.ended_at: dict[str, float] = {}
        """Jobs that ended (released, or failed: never live again) -> when (epoch seconds of the
        event's ``at``), in arrival order: what :meth:`forget` drops once past the keep window."""
        self.awaited: dict[str, float] = {}
        """Jobs of ``ended`` past the keep window whose ``job.accepted`` has not been answered yet
        -> when they ended, in arrival order: kept until the stream can no longer deliver it."""
        self.folded = 0
        """Events applied since this process started (from its snapshot, or from the start)."""
        self._advanced = asyncio.Event()

    def apply(self, seq: int, data: bytes) -> None:
        """Apply the stream's message ``seq`` (encoded ``data``); an undecodable one only advances."""
        if seq > self.applied_seq:
            self.applied_seq = seq
            self._advanced.set()
        self.folded += 1
        try:
            event = _ledger_decoder.decode(data)
        except msgspec.DecodeError:
            return
        match event:
            case ev.PlacementDecided():
                self.decided.add(event.job_id)
                self.accounts.decided(event)
                if event.cluster == "dedicated":
                    self.note_dedicated(event)
                elif self.world.apply_decided(event) and shrinks(event):
                    self.freed()
            case ev.PlacementFailed():
                self.decided.add(event.job_id)
                self.awaited.pop(event.job_id, None)  # answered: forgotten with the window from now on
                if event.job_id not in self.accounts.live:  # settled for good: forgotten after the window
                    self._ended(event.job_id, event.at.timestamp())
            case ev.PlacementDegraded():
                self.world.note_degraded(event.job_id, event.revision)
            case ev.PlacementReleased():
                if self.accounts.released(event.job_id, event.at):
                    self.capacity_changed.set()  # its tenant's usage dropped: jobs waiting at a quota may go
                if event.job_id not in self.decided:  # a reservation made after this would never be freed
                    self.ended.add(event.job_id)
                    self.capacity_changed.set()
                self.dedicated.pop(event.job_id, None)
                if self.world.release(event.job_id):
                    self.capacity_changed.set()
                self._ended(event.job_id, event.at.timestamp())

    def _ended(self, job_id: str, at: float) -> None:
        self.ended_at.pop(job_id, None)  # re-inserted: the dict stays in arrival order
        self.ended_at[job_id] = at

    def forget(self, before: float, awaited_before: float) -> int:
        """Forget the jobs that ended before ``before`` (epoch seconds; ``ended_keep_s`` ago):
        every map keyed by job is then bounded by the live jobs plus those of the window.
        Returns how many. A decided job is forgotten only long after its release, when nothing of
        it can still arrive (its decisions are stored before its release, and a redelivered
        ``job.accepted`` is acked within ``ack_wait``). A job released before any decision is not:
        its first ``job.accepted`` may arrive any time later (placement behind on JOBS, or down),
        and deciding it then would book a reservation nobody releases. It moves to ``awaited``
        until its ``placement.failed`` is stored, or until ``awaited_before`` (the oldest event
        JOBS still holds: ``events_max_age_s`` ago), after which nothing can deliver it."""
        gone: list[tuple[str, float]] = []
        for job_id, at in self.ended_at.items():
            if at >= before:
                break  # arrival order is close to time order: the rest go on a later pass
            gone.append((job_id, at))
        forgotten = []
        for job_id, at in gone:
            del self.ended_at[job_id]
            if job_id in self.ended and job_id not in self.decided:
                self.awaited[job_id] = at
            else:
                forgotten.append(job_id)
        for job_id, at in self.awaited.items():
            if at >= awaited_before:
                break
            forgotten.append(job_id)
        for job_id in forgotten:
            self.awaited.pop(job_id, None)
            self.decided.discard(job_id)
            self.ended.discard(job_id)
            self.accounts.gone.discard(job_id)
            self.world.forget(job_id)
        return len(forgotten)

    def freed(self) -> None:
        """A booking shrank (``job.scale``): pending and degraded jobs may fit now."""
        self.world.epoch += 1
        self.capacity_changed.set()

    def note_dedicated(self, e: ev.PlacementDecided) -> None:
        """A stored revision of a dedicated job: kept if it is the job's highest and the job lives."""
        prev = self.dedicated.get(e.job_id)
        if e.job_id not in self.world.released and (prev is None or e.revision > prev.revision):
            self.dedicated[e.job_id] = e

    async def on_message(self, msg: Msg) -> None:
        self.apply(stream_sequence(msg.reply), msg.data)

    async def advanced(self) -> None:
        """Return once the next event is applied."""
        self._advanced.clear()
        await self._advanced.wait()

    async def catch_up(self, seq: int, timeout: float = 10.0) -> None:
        """Wait until the ledger has applied the stream up to ``seq``; ``TimeoutError`` if stuck."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.applied_seq < seq:
            self._advanced.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"ledger stuck at {self.applied_seq}, stream at {seq}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), left)

    async def follow(self, js: JetStreamContext, last_seq: int, timeout: float = 300, *, start: int = 1) -> object:
        """Follow PLACEMENTS from sequence ``start`` (its beginning, or the one after a
        snapshot's); returns the subscription once the ledger has applied the stream up to
        ``last_seq`` (its last sequence when the service started)."""
        policy = js_api.DeliverPolicy.ALL if start <= 1 else js_api.DeliverPolicy.BY_START_SEQUENCE
        sub = await js.subscribe(
            "",
            stream=s.PLACEMENTS.name,
            ordered_consumer=True,
            cb=self.on_message,
            deliver_policy=policy,
            config=js_api.ConsumerConfig(
                filter_subjects=list(s.PLACEMENTS.subjects), opt_start_seq=start if start > 1 else None
            ),
        )
        await self.catch_up(last_seq, timeout=timeout)
        log.info(
            "ledger rebuilt",
            reservations=len(self.world.reservations),
            decided=len(self.decided),
            seq=last_seq,
            start=start,
            folded=self.folded,
        )
        return sub
