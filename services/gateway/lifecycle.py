"""``job.cancel`` and ``job.complete``: end a job on a client's or the Cluster Manager's word.

The gateway has no database, so it keeps its own view of every job's state, folded from
the JOBS, PLACEMENTS and CLUSTERS streams by one ordered consumer per stream (replayed
from the start when the gateway starts). It does not depend on the metadata service.
Only the events that change an answer are folded (:data:`VIEW_SUBJECTS`): that a job
exists, that it was asked to end, and how it ended. Accepted, placed, provisioning and
running are all "live" to ``job.cancel``/``job.complete``, so ``job.accepted``,
``placement.decided`` and the launch events (two of a shared job's three events) are not
delivered to the gateway at all; nor are a job's later revisions, ``placement.degraded``
(``degraded`` is live too: cancel and complete work as for a placed job) and
``cluster.instance_replaced``.

Read-your-writes: before answering, :meth:`JobStates.sync` asks each stream's ordered consumer
how many events it delivered (the last sequence of each folded subject while it still has some
pending) and waits until the view has folded at least that far (bounded by
``lifecycle.state_sync_timeout_s``, else 503). So a job whose ``job.submit`` was answered
is known to every gateway instance, and a cancel right after a submit never gets a 404.

Answers (``{"job_id", "state"}``):

- ``job.cancel``: publishes ``job.cancel_requested`` and answers ``cancelling``; a repeat
  answers the current ``cancelling``/``cancelled`` without publishing again; 404 for an
  unknown job; 409 when it already ended otherwise (or completion was reported).
- ``job.complete``: publishes ``job.completed`` and answers the outcome; a repeat with the
  same outcome answers it again; 409 when the job ended otherwise or is being cancelled.

The state becomes ``cancelled`` (and, authoritatively, any end state) when teardown's
``placement.released`` arrives, whose ``reason`` is the end state it recorded.

Tenants (§8.4): the view also knows each job's tenant (from ``job.submitted``). A request from
a tenant's account about another tenant's job is answered 404 exactly as for an unknown job
(:func:`visible`); inside the scheduler's account (tenant ``default``) every job is visible.

Bounded (issue #21): an ended job is forgotten ``retention.ended_keep_s`` after it ended (its end
time is the ``at`` of the event that ended it, so forgetting is a pure function of the events and
the clock); a cancel or complete of it is then answered 404 like an unknown job, with a message
saying so (``job.get`` still answers from metadata). The view is saved to ``SNAPSHOTS`` (owner
``gateway-view``: :class:`ViewSnapshot` plus the last sequence folded per stream) when due and at
a clean stop; at start it is loaded and each stream followed from the sequence after it, so a
restart folds only the tail. No valid snapshot, or a stream whose first sequence is beyond the
snapshot's (its events aged out): a warning and a full replay, as before.

Several gateway instances save the same owner's snapshot: each is a fold of the same streams
(and the same forgetting rule), so any valid one is a correct starting point; two saves of the
same generation race harmlessly (one of two equally valid snapshots wins, and ``load`` takes the
highest generation of the two slots, which at worst means a slightly longer tail).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, NamedTuple

import msgspec
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from schemas import events as ev
from schemas import subjects as s
from schemas.replies import CompleteRequest, JobRef, SubmitReply
from schemas.states import CANCELLING, TERMINAL_STATES, next_state
from services.runtime.backoff import sleep_unless
from services.runtime.config import RetentionConf
from services.runtime.delivery import delivery_position
from services.runtime.micro import RequestError
from services.runtime.publisher import Publisher
from services.runtime.snapshots import Loaded, Snapshots, due
from services.runtime.tenancy import tenant_of

log = structlog.get_logger()

VIEW_SUBJECTS: dict[str, tuple[str, ...]] = {
    s.JOBS.name: (s.JOB_SUBMITTED, s.JOB_REJECTED, s.JOB_CANCEL_REQUESTED, s.JOB_COMPLETED, s.JOB_EXPIRED),
    s.PLACEMENTS.name: (s.PLACEMENT_FAILED, s.PLACEMENT_RELEASED),
    s.CLUSTERS.name: (s.CLUSTER_PROVISION_FAILED,),
}
"""What the view folds, per stream: the events that change an answer of this module."""


class _Fact(msgspec.Struct):
    type: str
    job_id: str = ""
    outcome: str | None = None
    reason: str | None = None
    tenant: str = s.DEFAULT_TENANT
    at: datetime | None = None


def visible(owner: str, caller: str) -> bool:
    """Whether tenant ``caller`` may see and act on a job of tenant ``owner``: its own, and every
    job from inside the scheduler's account (the operators' view, tenant ``default``)."""
    return caller == s.DEFAULT_TENANT or caller == owner


SNAPSHOT_OWNER = "gateway-view"
SNAPSHOT_VERSION = 1


class ViewSnapshot(msgspec.Struct, kw_only=True):
    """The view as saved in ``SNAPSHOTS`` (msgpack); the stream sequences are in the envelope."""

    version: int = SNAPSHOT_VERSION
    states: dict[str, str] = {}
    tenants: dict[str, str] = {}
    ended: dict[str, float] = {}
    """When each ended job ended (epoch seconds): it is forgotten ``ended_keep_s`` later."""
    horizon: float = 0.0
    """The ``now`` of the last :meth:`JobStates.forget`: a job that ended ``ended_keep_s`` before it
    is not created again by a late event (a forgotten job stays forgotten)."""


_snapshot_encode = msgspec.msgpack.Encoder().encode
_snapshot_decoder = msgspec.msgpack.Decoder(ViewSnapshot)
_fact_decoder = msgspec.json.Decoder(_Fact)
_ref_decoder = msgspec.json.Decoder(JobRef)
_complete_decoder = msgspec.json.Decoder(CompleteRequest)
_enc = msgspec.json.Encoder()


class Target(NamedTuple):
    """How far :meth:`JobStates.sync` waits on one stream: folded up to stream sequence ``seq``, and,
    unless ``consumer`` is None, up to consumer sequence ``delivered`` of that ordered consumer."""

    seq: int
    consumer: str | None
    delivered: int


class JobStates:
    """Every live job's state (and ended ones for ``keep_s``), folded from the streams
    (:func:`schemas.states.next_state`, in arrival order); ``sync`` waits until it is current.

    Folding runs for every event of three streams, so it takes no lock and builds no
    metadata per message: a waiter in ``sync`` is checked only when there is one.
    Memory: live jobs plus those ended within ``keep_s`` (:meth:`forget`).
    """

    def __init__(self, keep_s: float = RetentionConf().ended_keep_s, clock: Callable[[], float] = time.time) -> None:
        self.keep_s = keep_s
        self._clock = clock
        self.states: dict[str, str] = {}
        self.tenants: dict[str, str] = {}
        """The tenant of each job not of tenant ``default`` (the others are not stored)."""
        self.ended: dict[str, float] = {}
        """When each ended job in ``states`` ended (epoch seconds)."""
        self._ends: list[tuple[float, str]] = []
        """``ended`` as a heap, earliest first (:meth:`forget` pops, never scans)."""
        self.horizon = 0.0
        self.applied: dict[str, int] = dict.fromkeys(VIEW_SUBJECTS, 0)
        self.folded = 0
        """Events folded by this process (since start or the last ``snapshot``'s count reset)."""
        self.replayed = 0
        """Events folded by this process since it started: the tail after the snapshot, or everything."""
        self.restored: Loaded | None = None
        """The snapshot this view started from (None: a full replay)."""
        self._waiters: list[tuple[dict[str, Target], asyncio.Future[None]]] = []
        self.position: dict[str, tuple[str, int]] = {}
        """Per stream, the ordered consumer that delivered the last folded event and its consumer sequence."""
        self._subs: dict[str, Any] = {}
        """Per stream, the ordered consumer's subscription folding it (nats-py's PushSubscription)."""

    # --- the fold (pure over the events and the clock) --------------------------------------
    def apply(self, data: bytes) -> None:
        try:
            f = _fact_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if not f.job_id:
            return
        current = self.states.get(f.job_id)
        new = next_state(current, f.type, outcome=f.outcome, reason=f.reason)
        if current is None and new is not None and new in TERMINAL_STATES:
            at = f.at.timestamp() if f.at is not None else self._clock()
            if at + self.keep_s <= self.horizon:
                return  # a late event of a job already forgotten: it stays forgotten
        if f.tenant != s.DEFAULT_TENANT:
            self.tenants[f.job_id] = f.tenant
        if new is not None:
            self._set(f.job_id, new, f.at.timestamp() if f.at is not None else None)

    def _set(self, job_id: str, state: str, at: float | None) -> None:
        self.states[job_id] = state
        if state in TERMINAL_STATES and job_id not in self.ended:
            end = at if at is not None else self._clock()
            self.ended[job_id] = end
            heapq.heappush(self._ends, (end, job_id))

    def forget(self, now: float) -> int:
        """Drop the jobs that ended ``keep_s`` or more before ``now``; how many were dropped."""
        self.horizon = max(self.horizon, now)
        cutoff = self.horizon - self.keep_s
        dropped = 0
        while self._ends and self._ends[0][0] <= cutoff:
            _, job_id = heapq.heappop(self._ends)
            if self.states.get(job_id) in TERMINAL_STATES:
                del self.states[job_id]
                self.tenants.pop(job_id, None)
                self.ended.pop(job_id, None)
                dropped += 1
        return dropped

    def tenant(self, job_id: str) -> str:
        return self.tenants.get(job_id, s.DEFAULT_TENANT)

    def note(self, job_id: str, event_type: str, *, outcome: str | None = None) -> None:
        """Apply our own publish at once (the stream will deliver it again; folding is idempotent)."""
        new = next_state(self.states.get(job_id), event_type, outcome=outcome)
        if new is not None:
            self._set(job_id, new, None)

    # --- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The view's :class:`ViewSnapshot` (msgpack); save it with ``applied`` as the sequences."""
        return _snapshot_encode(
            ViewSnapshot(states=self.states, tenants=self.tenants, ended=self.ended, horizon=self.horizon)
        )

    def restore(self, body: bytes, seqs: dict[str, int]) -> None:
        """Start from a snapshot: its view, and each stream applied up to its sequence.
        Raises ``msgspec.DecodeError``/``ValidationError`` (or ValueError) on a body it cannot use."""
        snap = _snapshot_decoder.decode(body)
        if snap.version != SNAPSHOT_VERSION:
            raise ValueError(f"view snapshot version {snap.version}")
        self.states, self.tenants, self.ended, self.horizon = snap.states, snap.tenants, snap.ended, snap.horizon
        self._ends = [(at, job_id) for job_id, at in self.ended.items()]
        heapq.heapify(self._ends)
        self.applied = {stream: int(seqs.get(stream, 0)) for stream in VIEW_SUBJECTS}

    # --- following the streams -----------------------------------------------------------------
    def _folder(self, stream: str) -> Callable[[Msg], Awaitable[None]]:
        async def on_msg(msg: Msg) -> None:
            self.apply(msg.data)
            self.folded += 1
            self.replayed += 1
            seq, consumer, delivered = delivery_position(msg.reply)
            if seq > self.applied[stream]:
                self.applied[stream] = seq
            self.position[stream] = (consumer, delivered)
            if self._waiters:
                self._wake()

        return on_msg

    def _current(self, targets: dict[str, Target]) -> bool:
        for stream, (seq, consumer, delivered) in targets.items():
            if self.applied[stream] < seq:
                return False
            if consumer is not None:
                name, applied = self.position.get(stream, ("", 0))
                if name != consumer or applied < delivered:
                    return False
        return True

    def _wake(self) -> None:
        for targets, fut in self._waiters:
            if not fut.done() and self._current(targets):
                fut.set_result(None)

    async def _load(self, js: JetStreamContext, snaps: Snapshots) -> Loaded | None:
        """The snapshot to start from, restored into the view; None (view left empty) for a full replay."""
        try:
            loaded = await snaps.load()
        except Exception as e:
            log.warning("view snapshot not loaded; replaying the streams from their start", error=repr(e))
            return None
        if loaded is None:
            log.info("no view snapshot; replaying the streams from their start")
            return None
        for stream in VIEW_SUBJECTS:
            seq = int(loaded.seqs.get(stream, 0))
            try:
                state = (await js.stream_info(stream)).state
            except Exception as e:
                log.warning("stream not readable; replaying the streams from their start", stream=stream, error=repr(e))
                return None
            if state.first_seq > seq + 1 or state.last_seq < seq:
                log.warning(
                    "view snapshot older than the stream's first event (aged out) or ahead of the stream;"
                    " replaying the streams from their start",
                    stream=stream,
                    snapshot_seq=seq,
                    first_seq=state.first_seq,
                    last_seq=state.last_seq,
                )
                return None
        try:
            self.restore(loaded.body, loaded.seqs)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
            log.warning("view snapshot unusable; replaying the streams from their start", error=repr(e))
            return None  # restore assigns nothing before the body is decoded and checked
        return loaded

    async def start(self, js: JetStreamContext, snaps: Snapshots | None = None) -> None:
        """Follow the streams: from the snapshot's sequences when ``snaps`` has a usable one, else from the start."""
        self.restored = await self._load(js, snaps) if snaps is not None else None
        restored_jobs, start_seqs = len(self.states), dict(self.applied)
        for stream, subjects in VIEW_SUBJECTS.items():
            config = js_api.ConsumerConfig(filter_subjects=list(subjects))
            policy = js_api.DeliverPolicy.ALL
            if self.restored is not None:
                policy = js_api.DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = self.applied[stream] + 1
            sub = await js.subscribe(
                subjects[0],
                stream=stream,
                ordered_consumer=True,
                cb=self._folder(stream),
                deliver_policy=policy,
                config=config,
            )
            self._subs[stream] = sub
        log.info(
            "job state view following",
            from_snapshot=self.restored is not None,
            after_seqs=start_seqs,
            restored_jobs=restored_jobs,
        )

    async def maintain(
        self, js: JetStreamContext, snaps: Snapshots, conf: RetentionConf, stop: asyncio.Event, sync_timeout: float
    ) -> None:
        """Until ``stop``: forget ended jobs past the window (once the view has caught up with the
        streams as they were at start, so a lagging stream cannot re-create a forgotten job) and
        save the snapshot when due; save once more at the end."""
        caught_up = False
        saved_at = time.monotonic()
        tick = min(conf.snapshot_every_s, max(conf.ended_keep_s / 4, 0.05), 1.0)
        while not await sleep_unless(stop, tick):
            if not caught_up:
                try:
                    await self.sync(js, sync_timeout)
                except Exception as e:
                    log.debug("view not caught up yet", error=repr(e))
                    continue
                caught_up = True
                log.info("job state view caught up", replayed=self.replayed, jobs=len(self.states))
            if dropped := self.forget(self._clock()):
                log.debug("ended jobs forgotten", count=dropped, jobs=len(self.states))
            if due(self.folded, saved_at, time.monotonic(), conf.snapshot_every_s, conf.snapshot_every_events):
                await self.save(js, snaps)
                saved_at = time.monotonic()
        if caught_up and self.folded:
            await self.save(js, snaps)

    async def save(self, js: JetStreamContext, snaps: Snapshots) -> None:
        """Save the view and the sequences it folded (errors logged: the next save tries again).

        A stream whose folded subjects are all applied is saved at its last sequence of any
        subject, not just the last folded one: a restart then starts after events the view does
        not fold (CLUSTERS folds one rare subject), and such events aging out is no reason for a
        full replay. The stream's last sequence is read before the folded subjects' ones, so
        every folded event up to it is among those checked."""
        try:
            lasts = {stream: int((await js.stream_info(stream)).state.last_seq or 0) for stream in VIEW_SUBJECTS}
            targets = await _last_sequences(js)
        except Exception as e:
            log.debug("stream ends not read; saving the folded sequences", error=repr(e))
            lasts, targets = {}, {}
        seqs = dict(self.applied)
        for stream, last in lasts.items():
            if seqs[stream] >= targets.get(stream, last):
                seqs[stream] = max(seqs[stream], last)
        body, folded = self.snapshot(), self.folded
        try:
            await snaps.save(body, seqs)
        except Exception as e:
            log.warning("view snapshot not saved", error=repr(e))
            return
        self.folded -= folded

    async def stop(self) -> None:
        for sub in self._subs.values():
            try:
                await sub.unsubscribe()
            except Exception as e:
                log.debug("unsubscribe failed", error=repr(e))

    async def sync(self, js: JetStreamContext, timeout: float) -> None:
        """Wait until every event stored before this call has been folded in."""
        targets = await self._targets(js)
        if self._current(targets):
            return
        waiter = (targets, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1], timeout)
        finally:
            self._waiters.remove(waiter)

    async def _targets(self, js: JetStreamContext) -> dict[str, Target]:
        """Per stream, how far the view must have folded for every event stored before this call to be in.

        Asked of the stream's own ordered consumer (``CONSUMER.INFO``): when it has nothing pending,
        the view is current once it has folded what that consumer delivered, up to its consumer
        sequence (its *stream* sequence may be past the last delivered event: a filtered consumer
        moves it over the subjects it skips). One small request per stream, where the last message
        of each folded subject (``STREAM.MSG.GET``, body and all, base64 in JSON) was eight per
        ``job.cancel`` or ``job.complete``. A stream whose consumer has something pending or does
        not answer (being recreated after a gap) falls back to those messages' stream sequences."""

        async def target(stream: str) -> Target:
            sub = self._subs.get(stream)
            if sub is not None:
                with contextlib.suppress(Exception):
                    info = await sub.consumer_info()
                    if not info.num_pending:
                        delivered = int(info.delivered.consumer_seq or 0) if info.delivered else 0
                        return Target(0, info.name, delivered) if delivered else Target(0, None, 0)
            return Target((await _last_sequences(js, (stream,)))[stream], None, 0)

        seqs = await asyncio.gather(*(target(stream) for stream in VIEW_SUBJECTS))
        return dict(zip(VIEW_SUBJECTS, seqs, strict=True))


async def _last_sequences(js: JetStreamContext, streams: Iterable[str] = VIEW_SUBJECTS) -> dict[str, int]:
    """Per stream, the sequence of the last stored message of any folded subject."""
    pairs = [(stream, subject) for stream in streams for subject in VIEW_SUBJECTS[stream]]

    async def last(stream: str, subject: str) -> int:
        try:
            return int((await js.get_last_msg(stream, subject)).seq or 0)
        except nats.js.errors.NotFoundError:
            return 0

    seqs = await asyncio.gather(*(last(stream, subject) for stream, subject in pairs))
    out = dict.fromkeys(streams, 0)
    for (stream, _), seq in zip(pairs, seqs, strict=True):
        out[stream] = max(out[stream], seq)
    return out


class Lifecycle:
    def __init__(self, js: JetStreamContext, publisher: Publisher, states: JobStates, sync_timeout_s: float) -> None:
        self.js = js
        self.publisher = publisher
        self.states = states
        self.sync_timeout_s = sync_timeout_s

    async def state(self, job_id: str, tenant: str = s.DEFAULT_TENANT) -> str:
        """The job's state once the view is current; 404 if it is unknown or not ``tenant``'s to see."""
        try:
            await self.states.sync(self.js, self.sync_timeout_s)
        except Exception as e:
            log.warning("job state view not current", job_id=job_id, error=repr(e))
            raise RequestError(503, "job state is not available right now; retry", job_id=job_id) from e
        state = self.states.states.get(job_id)
        if state is None or not visible(self.states.tenant(job_id), tenant):
            raise RequestError(404, unknown_job(job_id, self.states.keep_s), job_id=job_id)
        return state

    async def _publish(self, event: ev.JobEvent) -> None:
        try:
            await self.publisher.publish(event)
        except Exception as e:
            log.warning("publish failed", job_id=event.job_id, type=ev.subject_of(event), error=repr(e))
            raise RequestError(503, "the job store (JetStream) is unavailable; retry", job_id=event.job_id) from e

    async def cancel(self, msg: Msg) -> bytes:
        tenant = tenant_of(msg)
        req = _ref_decoder.decode(msg.data)
        state = await self.state(req.job_id, tenant)
        if state in (CANCELLING, "cancelled"):
            return _reply(req.job_id, state)
        if state in TERMINAL_STATES:
            raise RequestError(409, f"job {req.job_id} already ended: {state}", job_id=req.job_id)
        await self._publish(
            ev.JobCancelRequested(
                event_id=ev.event_id_for(req.job_id, s.JOB_CANCEL_REQUESTED),
                job_id=req.job_id,
                reason="cancel requested",
            )
        )
        self.states.note(req.job_id, s.JOB_CANCEL_REQUESTED)
        log.info("cancel requested", job_id=req.job_id, was=state)
        return _reply(req.job_id, CANCELLING)

    async def complete(self, msg: Msg) -> bytes:
        tenant = tenant_of(msg)
        req = _complete_decoder.decode(msg.data)
        state = await self.state(req.job_id, tenant)
        if state == req.outcome:
            return _reply(req.job_id, state)
        if state in TERMINAL_STATES or state == CANCELLING:
            raise RequestError(409, f"job {req.job_id} already ended: {state}", job_id=req.job_id)
        await self._publish(
            ev.JobCompleted(
                event_id=ev.event_id_for(req.job_id, s.JOB_COMPLETED),
                job_id=req.job_id,
                outcome=req.outcome,
                message=req.message,
            )
        )
        self.states.note(req.job_id, s.JOB_COMPLETED, outcome=req.outcome)
        log.info("completion reported", job_id=req.job_id, outcome=req.outcome, was=state)
        return _reply(req.job_id, req.outcome)


def unknown_job(job_id: str, keep_s: float) -> str:
    """The 404 message: the gateway cannot tell a job it never knew from one it forgot."""
    return (
        f"unknown job {job_id} (the gateway forgets jobs that ended more than {keep_s:g} s ago;"
        " job.get may still know it)"
    )


def _reply(job_id: str, state: str) -> bytes:
    return _enc.encode(SubmitReply(job_id=job_id, state=state))  # type: ignore[arg-type]


__all__ = [
    "SNAPSHOT_OWNER",
    "SNAPSHOT_VERSION",
    "VIEW_SUBJECTS",
    "JobStates",
    "Lifecycle",
    "ViewSnapshot",
    "unknown_job",
    "visible",
]
