"""The tenant relay (§8.4, §8.6): each tenant job's placement events copied into TENANT_PLACEMENTS.

A durable batch consumer ``tenant-relay`` on PLACEMENTS (decided, failed, degraded,
released) reads only the ``tenant`` and ``event_id`` of each event (:class:`RelayHead`):

- an event of tenant ``default`` (the scheduler's own account) is acked, nothing copied;
- any other tenant's is published, same bytes, on ``sched.relay.tenant.<t>.placement.<e>``
  with ``Nats-Msg-Id`` = its ``event_id``. TENANT_PLACEMENTS captures that subject, stores
  it as ``tenant.<t>.placement.<e>`` and re-publishes it only once stored, so a retried
  copy (a redelivery after a crash before the ack) is dropped as a duplicate within the
  stream's duplicate window and no core subscriber sees it twice. The tenant's account
  imports ``tenant.<t>.placement.*`` as ``placement.*``;
- before the first copy of a tenant the process declares that tenant's durable
  ``cluster-manager-<t>`` (idempotent; deliver all, explicit ack) and remembers it, so the
  tenant's Cluster Manager reads every copy at least once, whenever it first connects;
- the batch is acked once every copy is stored; JetStream unavailable holds the batch and
  retries it; an event that does not decode (no ``event_id``, a tenant that is not one
  subject token) is dead-lettered to ``deadletter.gateway``.

A batch's copies are stored in PLACEMENTS' order. Any number of gateway instances share the
durable (each batch goes to one of them); with several, two batches may be relayed at once
and interleave, so a tenant orders a job's decisions by their ``revision``, as every reader
of PLACEMENTS may have to after a redelivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated

import msgspec
import nats.errors
import nats.js.errors
import structlog
from msgspec import Meta
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import subjects as s
from schemas.types import Tenant
from services.runtime import natspy
from services.runtime.batch import BatchConsumer
from services.runtime.delivery import Delivery
from services.runtime.publisher import PublishError
from services.runtime.streams import ensure_consumer

log = structlog.get_logger()

SERVICE = "gateway"
"""Dead letters go to ``deadletter.gateway``: the relay runs in the gateway's processes."""


class RelayHead(msgspec.Struct, kw_only=True):
    """What the relay reads of a placement event: whose job it is, and the id its copy is
    stored under (unknown fields, the rest of the event, are skipped by the decoder)."""

    event_id: Annotated[str, Meta(min_length=1)]
    job_id: str = ""
    tenant: Tenant = s.DEFAULT_TENANT


decoder: msgspec.json.Decoder[RelayHead] = msgspec.json.Decoder(RelayHead)


def copy_subject(head: RelayHead, subject: str) -> str | None:
    """Where the tenant's copy of the event stored on ``subject`` is published, or None for
    the ``default`` tenant, whose events are not copied."""
    if head.tenant == s.DEFAULT_TENANT:
        return None
    return s.tenant_relay_subject(head.tenant, subject)


def new_tenants(heads: Sequence[RelayHead], ready: set[str] | frozenset[str]) -> list[str]:
    """The tenants of ``heads`` (not ``default``) whose durable is not known to exist yet, sorted."""
    return sorted({h.tenant for h in heads if h.tenant != s.DEFAULT_TENANT} - ready)


def is_transient(e: BaseException) -> bool:
    """JetStream unavailable, slow or refusing for now: hold the batch and retry it, never
    dead-letter it (every copy is an event PLACEMENTS stored; none is poison)."""
    return isinstance(e, (TimeoutError, PublishError, nats.errors.Error, nats.js.errors.Error))


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Stored(msgspec.Struct):
    """A JetStream publish ack, or its error."""

    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_stored = msgspec.json.Decoder(_Stored)


def stored(data: bytes) -> _Stored:
    """The ack of one copy; raises :class:`PublishError` when JetStream did not store it (an
    empty ack is the no-responders status: no stream captures the relay subject)."""
    if not data:
        raise PublishError(503, 0, "no stream captures the relay subject (no responders)")
    try:
        ack = _stored.decode(data)
    except msgspec.DecodeError as e:
        raise PublishError(500, 0, f"undecodable ack: {e}") from e
    if ack.error is not None:
        raise PublishError(ack.error.code, ack.error.err_code, ack.error.description)
    return ack


class Relay:
    """Copies a batch of placement events to their tenants' subjects (see the module docstring).

    A batch's copies are published pipelined, in the batch's (the stream's) order, so a
    tenant reads each job's events in the order PLACEMENTS stored them; then every ack is
    awaited."""

    def __init__(self, js: JetStreamContext, *, timeout: float = 5.0) -> None:
        self._js = js
        self._nc: Client = natspy.connection(js)
        self._timeout = timeout
        self._ready: set[str] = set()
        """Tenants whose durable this process declared (each is declared once per process)."""
        self._inbox = ""
        self._acks: dict[str, asyncio.Future[bytes]] = {}
        self._count = 0

    @property
    def ready(self) -> frozenset[str]:
        return frozenset(self._ready)

    async def on_batch(self, items: Sequence[tuple[RelayHead, Delivery]]) -> None:
        copies = [(head, d, subject) for head, d in items if (subject := copy_subject(head, d.msg.subject))]
        if not copies:
            return
        for tenant in new_tenants([h for h, _, _ in copies], self._ready):
            await ensure_consumer(self._js, s.tenant_cluster_manager(tenant))
            self._ready.add(tenant)
            log.info("tenant durable declared", tenant=tenant, durable=s.tenant_cluster_manager(tenant).durable)
        await self._publish(copies)

    async def _publish(self, copies: Sequence[tuple[RelayHead, Delivery, str]]) -> None:
        """Publish every copy in order, then wait for each one's ack (raising the first failure)."""
        if not self._inbox:
            self._inbox = self._nc.new_inbox() + "."
            await self._nc.subscribe(self._inbox + "*", cb=self._on_ack)
        loop = asyncio.get_running_loop()
        waiting: list[tuple[RelayHead, str, str, asyncio.Future[bytes]]] = []
        try:
            for head, d, subject in copies:
                self._count += 1
                reply = f"{self._inbox}{self._count}"
                fut: asyncio.Future[bytes] = loop.create_future()
                self._acks[reply] = fut
                waiting.append((head, subject, reply, fut))
                await self._nc.publish(subject, d.msg.data, reply=reply, headers={s.MSG_ID_HEADER: head.event_id})
            await asyncio.wait([f for *_, f in waiting], timeout=self._timeout)
            for head, subject, _, fut in waiting:
                if not fut.done():
                    raise TimeoutError(f"no JetStream ack in time for {subject} {head.event_id}")
                ack = stored(fut.result())
                log.debug(
                    "relayed",
                    job_id=head.job_id,
                    tenant=head.tenant,
                    event_id=head.event_id,
                    subject=subject,
                    seq=ack.seq,
                    duplicate=ack.duplicate,
                )
        finally:
            for _, _, reply, fut in waiting:
                self._acks.pop(reply, None)
                fut.cancel()

    async def _on_ack(self, msg: Msg) -> None:
        fut = self._acks.pop(msg.subject, None)
        if fut is not None and not fut.done():
            fut.set_result(msg.data)

    def consumer(self, *, batch: int = 256) -> BatchConsumer[RelayHead]:
        """The durable ``tenant-relay`` consumer feeding :meth:`on_batch`; run it with ``.run(stop)``."""
        return BatchConsumer(
            self._js, s.TENANT_RELAY, decoder, self.on_batch, service=SERVICE, batch=batch, transient=is_transient
        )
