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

Read-your-writes: before answering, :meth:`JobStates.sync` reads the last sequence of each
folded subject and waits until the view has applied at least that far (bounded by
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
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

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
from services.runtime.delivery import stream_sequence
from services.runtime.micro import RequestError
from services.runtime.publisher import Publisher
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


def visible(owner: str, caller: str) -> bool:
    """Whether tenant ``caller`` may see and act on a job of tenant ``owner``: its own, and every
    job from inside the scheduler's account (the operators' view, tenant ``default``)."""
    return caller == s.DEFAULT_TENANT or caller == owner


_fact_decoder = msgspec.json.Decoder(_Fact)
_ref_decoder = msgspec.json.Decoder(JobRef)
_complete_decoder = msgspec.json.Decoder(CompleteRequest)
_enc = msgspec.json.Encoder()


class JobStates:
    """Every job's state, folded from the streams (:func:`schemas.states.next_state`, in arrival
    order); ``sync`` waits until it is current.

    Folding runs for every event of three streams, so it takes no lock and builds no
    metadata per message: a waiter in ``sync`` is checked only when there is one.
    """

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.tenants: dict[str, str] = {}
        """The tenant of each job not of tenant ``default`` (the others are not stored)."""
        self.applied: dict[str, int] = dict.fromkeys(VIEW_SUBJECTS, 0)
        self._waiters: list[tuple[dict[str, int], asyncio.Future[None]]] = []
        self._subs: list[object] = []

    def apply(self, data: bytes) -> None:
        try:
            f = _fact_decoder.decode(data)
        except msgspec.DecodeError:
            return
        if not f.job_id:
            return
        if f.tenant != s.DEFAULT_TENANT:
            self.tenants[f.job_id] = f.tenant
        new = next_state(self.states.get(f.job_id), f.type, outcome=f.outcome, reason=f.reason)
        if new is not None:
            self.states[f.job_id] = new

    def tenant(self, job_id: str) -> str:
        return self.tenants.get(job_id, s.DEFAULT_TENANT)

    def note(self, job_id: str, event_type: str, *, outcome: str | None = None) -> None:
        """Apply our own publish at once (the stream will deliver it again; folding is idempotent)."""
        new = next_state(self.states.get(job_id), event_type, outcome=outcome)
        if new is not None:
            self.states[job_id] = new

    def _folder(self, stream: str) -> Callable[[Msg], Awaitable[None]]:
        async def on_msg(msg: Msg) -> None:
            self.apply(msg.data)
            seq = stream_sequence(msg.reply)
            if seq > self.applied[stream]:
                self.applied[stream] = seq
            if self._waiters:
                self._wake()

        return on_msg

    def _current(self, targets: dict[str, int]) -> bool:
        return all(self.applied[n] >= t for n, t in targets.items())

    def _wake(self) -> None:
        for targets, fut in self._waiters:
            if not fut.done() and self._current(targets):
                fut.set_result(None)

    async def start(self, js: JetStreamContext) -> None:
        for stream, subjects in VIEW_SUBJECTS.items():
            sub = await js.subscribe(
                subjects[0],
                stream=stream,
                ordered_consumer=True,
                cb=self._folder(stream),
                deliver_policy=js_api.DeliverPolicy.ALL,
                config=js_api.ConsumerConfig(filter_subjects=list(subjects)),
            )
            self._subs.append(sub)

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()  # type: ignore[attr-defined]
            except Exception as e:
                log.debug("unsubscribe failed", error=repr(e))

    async def sync(self, js: JetStreamContext, timeout: float) -> None:
        """Wait until every event stored before this call has been folded in."""
        targets = await _last_sequences(js)
        if self._current(targets):
            return
        waiter = (targets, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1], timeout)
        finally:
            self._waiters.remove(waiter)


async def _last_sequences(js: JetStreamContext) -> dict[str, int]:
    """Per stream, the sequence of the last stored message of any folded subject."""
    pairs = [(stream, subject) for stream, subjects in VIEW_SUBJECTS.items() for subject in subjects]

    async def last(stream: str, subject: str) -> int:
        try:
            return int((await js.get_last_msg(stream, subject)).seq or 0)
        except nats.js.errors.NotFoundError:
            return 0

    seqs = await asyncio.gather(*(last(stream, subject) for stream, subject in pairs))
    out = dict.fromkeys(VIEW_SUBJECTS, 0)
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
            raise RequestError(404, f"unknown job {job_id}", job_id=job_id)
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


def _reply(job_id: str, state: str) -> bytes:
    return _enc.encode(SubmitReply(job_id=job_id, state=state))  # type: ignore[arg-type]


__all__ = ["VIEW_SUBJECTS", "JobStates", "Lifecycle", "visible"]
