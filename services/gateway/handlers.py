"""Gateway request handlers: decode, validate, publish ``job.submitted``, answer.

Each handler is a plain async function of the request; its dependencies (the
publisher, the configuration, the decision waiter) come from :class:`Gateway`.

Tenants (§8.4): a job records the tenant that submitted it (``tenant_of``: the account on
``sched.tenant.*``, ``default`` on the plain subjects), and idempotency keys are per tenant
(:func:`job_id_for`), so two tenants sending the same key get two jobs.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import uuid

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import decode_job_request, normalise
from schemas.replies import SubmitReply
from services.gateway.admission import Admission
from services.runtime.config import Config
from services.runtime.micro import RequestError
from services.runtime.publisher import Publisher
from services.runtime.tenancy import tenant_of

log = structlog.get_logger()

MAX_BODY = 256 * 1024
_JOB_NS = uuid.UUID("6f1c0b0e-4e0b-4c6f-9d55-0b9e8a1f2c11")
_JOB_NS_BYTES = _JOB_NS.bytes
_reply_enc = msgspec.json.Encoder()


def job_id_for(key: str | None, tenant: str = s.DEFAULT_TENANT) -> str:
    """The same idempotency key of the same tenant always names the same job: ``uuid5(ns, key).hex``
    where ``ns`` is :data:`_JOB_NS` for tenant ``default`` (ids as before tenants) and the tenant's own
    namespace otherwise (:func:`tenant_namespace`), so two tenants' equal keys name two jobs.
    Computed without building UUID objects (this runs for every request)."""
    if not key:
        return uuid.uuid4().hex
    ns = _JOB_NS_BYTES if tenant == s.DEFAULT_TENANT else tenant_namespace(tenant)
    h = bytearray(hashlib.sha1(ns + key.encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    return h.hex()


@functools.lru_cache(maxsize=1024)
def tenant_namespace(tenant: str) -> bytes:
    """The namespace of a tenant's job ids: ``uuid5(_JOB_NS, "tenant:<tenant>")`` (16 bytes)."""
    return uuid.uuid5(_JOB_NS, f"tenant:{tenant}").bytes


def idempotency_key(msg: Msg, request_id: str | None) -> str | None:
    """Header ``Nats-Msg-Id`` wins over the body's ``request_id``."""
    header = (msg.headers or {}).get(s.MSG_ID_HEADER)
    return header or request_id


class Decisions:
    """Routes decision events (decided / failed / rejected) to waiting requests by job id.

    One set of core subscriptions per gateway instance serves every ``placement.request``.
    They exist only while someone waits (plus ``idle_s``), so a gateway serving plain
    ``job.submit`` traffic is not handed every decision. A waiter registers, and the
    subscription is sent, before the job is published on the same connection, which the
    server processes in order: no answer is missed.

    The answer is the job's *first* decision: a ``placement.decided`` of a later revision
    (§8.1: replicas moved) is not an answer to ``placement.request`` and is passed over.
    """

    SUBJECTS = (s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.JOB_REJECTED)

    def __init__(self, nc: Client | None = None, idle_s: float = 30.0) -> None:
        self._nc = nc
        self._idle_s = idle_s
        self._waiters: dict[str, asyncio.Future[bytes]] = {}
        self._subs: list[Subscription] = []
        self._last_used = 0.0

    async def expect(self, job_id: str) -> asyncio.Future[bytes]:
        loop = asyncio.get_running_loop()
        self._last_used = loop.time()
        if self._nc is not None and not self._subs:
            self._subs = [await self._nc.subscribe(subject, cb=self.on_event) for subject in self.SUBJECTS]
        fut = self._waiters.get(job_id)
        if fut is None or fut.done():
            fut = loop.create_future()
            self._waiters[job_id] = fut
        return fut

    def forget(self, job_id: str) -> None:
        self._waiters.pop(job_id, None)
        self._last_used = asyncio.get_running_loop().time()

    async def look_up(self, job_id: str) -> bytes | None:
        """The job's decision event if it was already made (asks the metadata service's
        ``job.events``; None when it has none yet or does not answer)."""
        if self._nc is None:
            return None
        try:
            reply = await self._nc.request(s.JOB_EVENTS, _enc_ref.encode(_JobRef(job_id)), timeout=1.0)
            found = _events_decoder.decode(reply.data).events
        except Exception:  # no metadata service, 404, timeout: wait for the live event instead
            return None
        for e in found:
            if e.get("type") in self.SUBJECTS and first_decision(e.get("revision")):
                return _enc_ref.encode(e)
        return None

    async def drop_idle(self) -> None:
        """Unsubscribe once nobody has waited for ``idle_s``."""
        if self._subs and not self._waiters and asyncio.get_running_loop().time() - self._last_used > self._idle_s:
            subs, self._subs = self._subs, []
            for sub in subs:
                await sub.unsubscribe()

    async def on_event(self, msg: Msg) -> None:
        if not self._waiters:
            return
        try:
            ref = _job_ref_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        if not first_decision(ref.revision):
            return
        fut = self._waiters.pop(ref.job_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg.data)


class _JobRef(msgspec.Struct, omit_defaults=True):
    job_id: str
    revision: int | None = None
    """``placement.decided``'s revision (absent: 1, and on the other answers)."""


def first_decision(revision: object) -> bool:
    """Whether an answer event is the job's first decision: no revision, or revision 1."""
    return revision is None or revision == 1


_job_ref_decoder = msgspec.json.Decoder(_JobRef)
_enc_ref = msgspec.json.Encoder()


class _Events(msgspec.Struct):
    events: list[dict[str, object]] = []


_events_decoder = msgspec.json.Decoder(_Events)


class Gateway:
    def __init__(self, publisher: Publisher, config: Config, decisions: Decisions, admission: Admission) -> None:
        self.publisher = publisher
        self.config = config
        self.decisions = decisions
        self.admission = admission

    async def _submit(self, msg: Msg) -> ev.JobSubmitted:
        tenant = tenant_of(msg)
        req = decode_job_request(msg.data)  # bad input gets its 400 even while shedding
        self.admission.check()
        key = idempotency_key(msg, req.request_id)
        job_id = job_id_for(key, tenant)
        spec = normalise(req, self.config.defaults)
        return ev.JobSubmitted(
            event_id=ev.event_id_for(job_id, s.JOB_SUBMITTED),
            job_id=job_id,
            spec=spec,
            idempotency_key=key,
            tenant=tenant,
        )

    async def submit(self, msg: Msg) -> bytes:
        event = await self._submit(msg)
        await self._publish(event)
        return _reply_enc.encode(SubmitReply(job_id=event.job_id, state="submitted"))

    async def placement_request(self, msg: Msg) -> bytes:
        event = await self._submit(msg)
        waiter = await self.decisions.expect(event.job_id)
        try:
            if await self._publish(event):  # submitted before: its decision may be out already
                earlier = await self.decisions.look_up(event.job_id)
                if earlier is not None:
                    return earlier
            timeout = self.config.timeouts.placement_request_timeout_s
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), timeout)
            except TimeoutError:
                raise RequestError(
                    504, f"no decision within {timeout:g} s; the job stays pending", job_id=event.job_id
                ) from None
        finally:
            self.decisions.forget(event.job_id)

    async def _publish(self, event: ev.JobSubmitted) -> bool:
        """Store ``job.submitted``; True if the stream already had it (same idempotency key)."""
        try:
            return bool((await self.publisher.publish(event)).duplicate)
        except Exception as e:
            log.warning("publish job.submitted failed", job_id=event.job_id, error=repr(e))
            raise RequestError(
                503, "the job store (JetStream) is unavailable; retry with the same request_id", job_id=event.job_id
            ) from e
