"""Durable pull-consumer loop with an explicit outcome for every message.

The loop fetches in batches and runs the batch's handlers concurrently (started in
delivery order, so any synchronous work before a handler's first ``await`` happens in
order). Outcomes:

- handler returns: ack (its effects are durable by then: it awaited its publishes);
- handler called ``delivery.hold()``: the handler owns the message and acks it later;
- the payload does not decode, or the handler raises :class:`Poison`: ``term`` and a
  ``deadletter.<service>`` event with the reason, once;
- any other exception: ``nak`` with an exponential delay; once ``max_deliver`` is
  reached the message is terminated and dead-lettered instead of retried forever.

:class:`services.runtime.batch.BatchConsumer` instead hands each fetched batch to one handler (one database
transaction) and acks the batch after it returns; see its docstring for its outcomes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Generic, TypeVar

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import events as ev
from schemas import subjects as s
from services.runtime.backoff import delay
from services.runtime.delivery import Delivery, Poison, outcome, quietly, retry_delay
from services.runtime.puller import Puller
from services.runtime.streams import aged_out_unread, ensure_consumer

log = structlog.get_logger()

T = TypeVar("T")

RETENTION_CHECK_S = 60.0
"""How often a consumer asks whether events left its stream before it read them."""


Handler = Callable[[T, Delivery], Awaitable[None]]


def by_key(work: list[tuple[T, Delivery]], key: Callable[[T], str]) -> list[list[tuple[T, Delivery]]]:
    """The batch's events split by ``key``, each part in stream order (parts in order of first appearance)."""
    parts: dict[str, list[tuple[T, Delivery]]] = {}
    for item in work:
        parts.setdefault(key(item[0]), []).append(item)
    return list(parts.values())


@dataclass
class Consumer(Generic[T]):
    """Runs ``handler`` for each message of a durable pull consumer until ``stop``.

    ``skip(event)``, when given, names events the handler would ignore: they are acked
    at once, without running the handler (for consumers that see mostly such events)."""

    js: JetStreamContext
    spec: s.ConsumerSpec
    decoder: msgspec.json.Decoder[T]
    handler: Handler[T]
    _: KW_ONLY
    service: str
    batch: int = 256
    fetch_timeout: float = 1.0
    in_order: bool = False
    order_key: Callable[[T], str] | None = None
    """With ``in_order``: only events of the same key (e.g. a job id) keep stream order; those of
    different keys in a batch are handled concurrently (a job's events in order, jobs in parallel)."""
    skip: Callable[[T], bool] | None = None
    _log: structlog.stdlib.BoundLogger = field(init=False, repr=False)
    _next_retention_check: float = field(default=0.0, init=False, repr=False)
    _checking: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    aged_out: int = field(default=0, init=False)
    """Events that left the stream before this consumer read them (:func:`aged_out_unread`)."""

    def __post_init__(self) -> None:
        self._log = log.bind(consumer=self.spec.durable, stream=self.spec.stream)

    def _watch_retention(self) -> None:
        """Once a minute, in the background: did events leave the stream (retention) before this
        durable read them? Logged as an error each time the count grows: it lags past the window."""
        now = time.monotonic()
        if now < self._next_retention_check or (self._checking is not None and not self._checking.done()):
            return
        self._next_retention_check = now + RETENTION_CHECK_S
        self._checking = asyncio.create_task(self._check_retention())

    async def _check_retention(self) -> None:
        try:
            lost = await aged_out_unread(self.js, self.spec)
        except Exception as e:  # a check, never a reason to stop consuming
            self._log.debug("retention check failed", error=repr(e))
            return
        if lost > self.aged_out:
            self._log.error(
                "events left the stream (retention) before this consumer read them: it lags past the window",
                aged_out=lost,
            )
        self.aged_out = max(self.aged_out, lost)

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_consumer(self.js, self.spec)
        # Not nats-py's fetch: once a long poll has delivered a first message it waits for
        # the whole batch or the expiry (up to fetch_timeout of added latency per message).
        puller = Puller(self.js, self.spec.stream, self.spec.durable, max_messages=self.batch)
        await puller.start()
        self._log.info("consuming", filter=list(self.spec.filter_subjects))
        failures = 0
        while not stop.is_set():
            try:
                msgs = await puller.fetch(self.batch, timeout=self.fetch_timeout)
                if not msgs:
                    continue
            except Exception as e:  # disconnected, server restarting, consumer gone...
                failures += 1
                await self._fetch_failed(e, failures)
                continue
            failures = 0
            self._watch_retention()
            await self._dispatch(msgs, stop)
        await puller.stop()
        self._log.info("stopped consuming")

    async def _dispatch(self, msgs: list[Msg], stop: asyncio.Event) -> None:
        """Handle one fetched batch: each message's handler concurrently, or one after another
        when ``in_order`` (overridden by BatchConsumer). Undecodable payloads are dead-lettered
        and skipped events acked here, without a task of their own."""
        work: list[tuple[T, Delivery]] = []
        for event, d in await self._decoded(msgs):
            if self.skip is not None and self.skip(event):
                await d.ack()
            else:
                work.append((event, d))
        if len(work) <= 1 or (self.in_order and self.order_key is None):
            for event, d in work:
                await self._process(event, d)
        elif self.in_order and self.order_key is not None:
            await asyncio.gather(*(self._in_turn(chain) for chain in by_key(work, self.order_key)))
        else:
            await asyncio.gather(*(self._process(event, d) for event, d in work))

    async def _in_turn(self, chain: list[tuple[T, Delivery]]) -> None:
        for event, d in chain:
            await self._process(event, d)

    async def _decoded(self, msgs: list[Msg]) -> list[tuple[T, Delivery]]:
        """Each message decoded with its delivery; an undecodable one is dead-lettered at once
        (decoding is deterministic, so a retry could not succeed) and left out."""
        out: list[tuple[T, Delivery]] = []
        for m in msgs:
            d = Delivery(m)
            try:
                out.append((self.decoder.decode(m.data), d))
            except (msgspec.DecodeError, RecursionError, ValueError) as e:  # msgspec recurses on deep nesting
                await self._dead_letter(d, f"undecodable {m.subject} payload: {e!r}"[:2000])
        return out

    async def _fetch_failed(self, e: Exception, failures: int) -> None:
        """Back off after the ``failures``-th fetch failure in a row (0.2 s growing 1.5-fold to
        5 s); re-declare the consumer every tenth (it may have been deleted, or the server
        restarted without it)."""
        self._log.warning("fetch failed", error=repr(e), failures=failures)
        await asyncio.sleep(delay(failures, base=0.2, factor=1.5, cap=5.0))
        if failures % 10 == 0:
            await self._recreate()

    async def _recreate(self) -> None:
        try:
            await ensure_consumer(self.js, self.spec)
        except Exception as e:
            self._log.warning("consumer re-declare failed", error=repr(e))

    async def _process(self, event: T, d: Delivery) -> None:
        try:
            await self.handler(event, d)
        except Exception as e:
            await self._settle(d, e, max_deliver=self.spec.max_deliver)
        else:
            await self._settle(d, None)

    async def _settle(self, d: Delivery, error: Exception | None, *, max_deliver: int = -1) -> None:
        """Carry out :func:`~services.runtime.delivery.outcome` for a handled message."""
        if error is None:
            out = outcome(None, held=d.held)
        else:
            out = outcome(error, held=d.held, num_delivered=d.num_delivered, max_deliver=max_deliver)
        match out.action:
            case "ack":
                await quietly(d.ack())
            case "hold":
                pass
            case "nak":
                self._log.warning(
                    "handler failed; will retry",
                    subject=d.msg.subject,
                    deliveries=d.num_delivered,
                    delay_s=out.delay,
                    error=repr(error),
                )
                await d.nak(delay=out.delay)
            case "dead_letter":
                if not isinstance(error, Poison):
                    self._log.error("giving up", subject=d.msg.subject, deliveries=d.num_delivered, exc_info=error)
                await self._dead_letter(d, out.reason)

    async def _dead_letter(self, d: Delivery, reason: str) -> None:
        md = d.msg.metadata
        seq = md.sequence.stream if md.sequence else None
        letter = ev.DeadLetter(
            event_id=f"{self.service}:{md.stream}:{seq}",
            service=self.service,
            subject=d.msg.subject,
            stream=md.stream,
            stream_seq=seq,
            num_delivered=d.num_delivered,
            reason=reason,
            data=d.msg.data[:16384].decode("utf-8", "replace"),
        )
        self._log.error("dead-lettered", subject=d.msg.subject, seq=seq, reason=reason)
        try:
            await self.js.publish(
                s.deadletter_subject(self.service),
                ev.encode(letter),
                headers={s.MSG_ID_HEADER: letter.event_id},
            )
        except Exception as e:  # keep the message: it will come back and be tried again
            self._log.warning("dead-letter publish failed; leaving message for redelivery", error=repr(e))
            await d.nak(delay=retry_delay(d.num_delivered))
            return
        await d.term()
