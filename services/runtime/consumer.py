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

:class:`BatchConsumer` instead hands each fetched batch to one handler (one database
transaction) and acks the batch after it returns; see its docstring for its outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import events as ev
from schemas import subjects as s
from services.runtime import direct
from services.runtime.bus import Publisher, ensure_consumer

log = structlog.get_logger()

T = TypeVar("T")


class Poison(Exception):
    """A message that will never succeed: dead-letter it instead of retrying."""


class Delivery:
    """One delivered message; guards against double acks."""

    __slots__ = ("_done", "_held", "msg")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self._done = False
        self._held = False

    @property
    def num_delivered(self) -> int:
        return int(self.msg.metadata.num_delivered or 1)

    def hold(self) -> None:
        """Take over acking: the loop will not ack this message when the handler returns."""
        self._held = True

    @property
    def done(self) -> bool:
        return self._done

    async def ack(self) -> None:
        if not self._done:
            self._done = True
            await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        if not self._done:
            self._done = True
            await self.msg.nak(delay=delay)

    async def term(self) -> None:
        if not self._done:
            self._done = True
            await self.msg.term()

    async def in_progress(self) -> None:
        if not self._done:
            await self.msg.in_progress()


Handler = Callable[[T, Delivery], Awaitable[None]]


def retry_delay(num_delivered: int, base: float = 0.5, cap: float = 30.0) -> float:
    return float(min(cap, base * 2 ** max(0, num_delivered - 1)))


class Consumer(Generic[T]):
    """Runs ``handler`` for each message of a durable pull consumer until ``stop``.

    ``skip(event)``, when given, names events the handler would ignore: they are acked
    at once, without running the handler (for consumers that see mostly such events)."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: s.ConsumerSpec,
        decoder: msgspec.json.Decoder[T],
        handler: Handler[T],
        *,
        service: str,
        batch: int = 256,
        fetch_timeout: float = 1.0,
        in_order: bool = False,
        skip: Callable[[T], bool] | None = None,
    ) -> None:
        self._js = js
        self._in_order = in_order
        self._skip = skip
        self.spec = spec
        self._decoder = decoder
        self._handler = handler
        self._service = service
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._publisher = Publisher(js)
        self._log = log.bind(consumer=spec.durable, stream=spec.stream)

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_consumer(self._js, self.spec)
        # Not nats-py's fetch: once a long poll has delivered a first message it waits for
        # the whole batch or the expiry (up to fetch_timeout of added latency per message).
        puller = _Puller(self._js, self.spec.stream, self.spec.durable, max_messages=self._batch)
        await puller.start()
        self._log.info("consuming", filter=list(self.spec.filter_subjects))
        failures = 0
        while not stop.is_set():
            try:
                msgs = await puller.fetch(self._batch, timeout=self._fetch_timeout)
                if not msgs:
                    continue
            except Exception as e:  # disconnected, server restarting, consumer gone...
                failures += 1
                await self._fetch_failed(e, failures)
                continue
            failures = 0
            await self._dispatch(msgs, stop)
        await puller.stop()
        self._log.info("stopped consuming")

    async def _dispatch(self, msgs: list[Msg], stop: asyncio.Event) -> None:
        """Handle one fetched batch: each message's handler concurrently, or one after another
        when ``in_order`` (overridden by BatchConsumer). Undecodable payloads are dead-lettered
        and skipped events acked here, without a task of their own."""
        work: list[tuple[T, Delivery]] = []
        for event, d in await self._decoded(msgs):
            if self._skip is not None and self._skip(event):
                await d.ack()
            else:
                work.append((event, d))
        if self._in_order or len(work) == 1:
            for event, d in work:
                await self._process(event, d)
        elif work:
            await asyncio.gather(*(self._process(event, d) for event, d in work))

    async def _decoded(self, msgs: list[Msg]) -> list[tuple[T, Delivery]]:
        """Each message decoded with its delivery; an undecodable one is dead-lettered at once
        (decoding is deterministic, so a retry could not succeed) and left out."""
        out: list[tuple[T, Delivery]] = []
        for m in msgs:
            d = Delivery(m)
            try:
                out.append((self._decoder.decode(m.data), d))
            except (msgspec.DecodeError, RecursionError, ValueError) as e:  # msgspec recurses on deep nesting
                await self._dead_letter(d, f"undecodable {m.subject} payload: {e!r}"[:2000])
        return out

    async def _fetch_failed(self, e: Exception, failures: int) -> None:
        """Back off after the ``failures``-th fetch failure in a row; re-declare the consumer
        every tenth (it may have been deleted, or the server restarted without it)."""
        self._log.warning("fetch failed", error=repr(e), failures=failures)
        await asyncio.sleep(min(5.0, 0.2 * failures))
        if failures % 10 == 0:
            await self._recreate()

    async def _recreate(self) -> None:
        try:
            await ensure_consumer(self._js, self.spec)
        except Exception as e:
            self._log.warning("consumer re-declare failed", error=repr(e))

    async def _process(self, event: T, d: Delivery) -> None:
        try:
            await self._handler(event, d)
            if not d._held:
                await d.ack()
        except Poison as e:
            await self._dead_letter(d, str(e))
        except Exception as e:
            n = d.num_delivered
            if self.spec.max_deliver > 0 and n >= self.spec.max_deliver:
                self._log.error("giving up", subject=d.msg.subject, deliveries=n, exc_info=True)
                await self._dead_letter(d, f"gave up after {n} deliveries: {e!r}")
            else:
                delay = retry_delay(n)
                self._log.warning(
                    "handler failed; will retry", subject=d.msg.subject, deliveries=n, delay_s=delay, error=repr(e)
                )
                await d.nak(delay=delay)

    async def _dead_letter(self, d: Delivery, reason: str) -> None:
        md = d.msg.metadata
        seq = md.sequence.stream if md.sequence else None
        letter = ev.DeadLetter(
            event_id=f"{self._service}:{md.stream}:{seq}",
            service=self._service,
            subject=d.msg.subject,
            stream=md.stream,
            stream_seq=seq,
            num_delivered=d.num_delivered,
            reason=reason,
            data=d.msg.data[:16384].decode("utf-8", "replace"),
        )
        self._log.error("dead-lettered", subject=d.msg.subject, seq=seq, reason=reason)
        try:
            await self._js.publish(
                s.deadletter_subject(self._service),
                ev.encode(letter),
                headers={s.MSG_ID_HEADER: letter.event_id},
            )
        except Exception as e:  # keep the message: it will come back and be tried again
            self._log.warning("dead-letter publish failed; leaving message for redelivery", error=repr(e))
            await d.nak(delay=retry_delay(d.num_delivered))
            return
        await d.term()


class _Puller:
    """A standing pull: messages stream into one buffer; ``fetch`` takes from it.

    nats-py's ``fetch`` waits for each message with its own task, timer and inbox id, and
    a request per fetch costs the server and us a round trip (plus a ``404`` when there is
    nothing) for every few messages. Instead, like the Go and JS clients' ``consume``, a
    pull request for up to ``max_messages`` stays open (``expires`` long) and is topped up
    when less than half of it is still owed, so under steady traffic messages arrive with
    no request of their own.

    Credit accounting: ``_owed`` is what was asked for and neither delivered nor reported
    gone (a ``408``/``409`` status names the messages its request still owed in
    ``Nats-Pending-Messages``). Should a status be lost (reconnect, server restart), every
    request is known to have expired ``expires`` after the last one was sent, and the
    credit is reset then.
    """

    EXPIRES_S = 10.0

    def __init__(self, js: JetStreamContext, stream: str, durable: str, *, max_messages: int = 256) -> None:
        self._nc = js._nc
        prefix = getattr(js, "_prefix", "$JS.API")
        self._subject = f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = self._nc.new_inbox()
        self._max = max(1, max_messages)
        self._buf: list[Msg] = []
        self._owed = 0
        self._asked_at = 0.0
        self._reconnects = self._reconnect_count()
        self._ready = asyncio.Event()
        self._conflict: str | None = None
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await direct.subscribe(self._nc, self._inbox, self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await direct.unsubscribe(self._nc, self._sub)
            self._sub = None

    def _on_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        status = None if data else direct.status_of(headers)
        if status is None:  # an event (its stored headers are not parsed: nothing reads them)
            self._owed = max(0, self._owed - 1)
            self._buf.append(Msg(self._nc, subject=subject.decode(), reply=reply.decode(), data=data))
            self._ready.set()
            return
        code, hdrs = status
        if code == "100":  # heartbeat
            return
        # 408 request expired, 409 conflict, 404 nothing (no_wait)
        try:
            gone = int(hdrs.get("Nats-Pending-Messages", 0))
        except ValueError:
            gone = self._owed
        self._owed = max(0, self._owed - gone)
        if code == "409":
            desc = hdrs.get("Description", "conflict")
            if "MaxAckPending" not in desc:  # a full ack window is back-pressure, not an error
                self._conflict = desc
                self._owed = 0
        self._ready.set()

    def _reconnect_count(self) -> int:
        return int(getattr(self._nc, "stats", {}).get("reconnects", 0))

    async def _top_up(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._owed and now - self._asked_at > self.EXPIRES_S + 1.0:
            self._owed = 0  # every request sent so far has expired; its 408 was lost
        if (n := self._reconnect_count()) != self._reconnects:
            self._reconnects, self._owed = n, 0  # a server that restarted forgot our requests
        want = self._max - self._owed - len(self._buf)
        if want * 2 < self._max and self._owed:
            return  # more than half of a full pull is still coming
        if want <= 0:
            return
        self._owed += want
        self._asked_at = now
        request = {"batch": want, "expires": int(self.EXPIRES_S * 1e9)}
        await self._nc.publish(self._subject, _json.encode(request), reply=self._inbox)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to ``batch`` buffered messages; waits up to ``timeout`` for the first one."""
        await self._top_up()
        if not self._buf:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
            if not self._buf and self._conflict is None:
                await self._top_up()  # a request may have ended (408): ask again before the next wait
        if self._conflict is not None:
            reason, self._conflict = self._conflict, None
            raise nats.js.errors.APIError(description=f"pull request conflict: {reason}")
        msgs, self._buf = self._buf[:batch], self._buf[batch:]
        return msgs


_json = msgspec.json.Encoder()


BatchHandler = Callable[[Sequence[tuple[T, Delivery]]], Awaitable[None]]
"""Handles a whole fetched batch at once, e.g. in one database transaction."""


def _never_transient(_: BaseException) -> bool:
    return False


class BatchConsumer(Consumer[T]):
    """Like :class:`Consumer`, but hands each fetched batch to one handler and acks it as a whole.

    For projections that write a batch in one transaction and ack after the commit.
    Outcomes, per fetched batch:

    - an undecodable payload is dead-lettered (``term``) at once and left out of the batch;
    - the handler returns: every message of the batch is acked;
    - the handler raises an error that ``transient(error)`` calls an outage (say, the
      database is down): nothing is acked, nakked or dead-lettered. Fetching pauses and the
      same batch is retried with exponential backoff (``retry_base_s`` .. ``retry_cap_s``),
      with in-progress pings keeping the messages ours, until it succeeds, or until
      ``stop`` is set (then they are nakked for prompt redelivery). An outage therefore
      never counts toward dead-lettering, however long it lasts;
    - any other error (or :class:`Poison`): the batch is retried one message at a time to
      isolate the culprit. A single message that fails is nakked with a delay and
      dead-lettered once it has been delivered ``give_up_after`` times (at once for
      ``Poison``). Give such consumers ``max_deliver=-1`` so the server never stops
      redelivering silently while the handler is merely waiting out an outage.

    With ``in_flight`` > 1, that many batches are handled at once, each with these
    outcomes and acked after its own handler returns (so the handler must tolerate batches
    finishing out of order): a projection can prepare the next batch while the previous
    one is being written.
    """

    def __init__(
        self,
        js: JetStreamContext,
        spec: s.ConsumerSpec,
        decoder: msgspec.json.Decoder[T],
        handler: BatchHandler[T],
        *,
        service: str,
        batch: int = 1000,
        fetch_timeout: float = 1.0,
        transient: Callable[[BaseException], bool] = _never_transient,
        give_up_after: int = 10,
        retry_base_s: float = 0.2,
        retry_cap_s: float = 5.0,
        in_flight: int = 1,
    ) -> None:
        super().__init__(js, spec, decoder, self._single, service=service, batch=batch, fetch_timeout=fetch_timeout)
        self._batch_handler = handler
        self._in_flight = max(1, in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._prefetch: asyncio.Task[list[Msg]] | None = None
        self._transient = transient
        self._give_up_after = give_up_after
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s

    async def _single(self, event: T, d: Delivery) -> None:
        await self._batch_handler([(event, d)])

    async def run(self, stop: asyncio.Event) -> None:
        """Like :meth:`Consumer.run`, but the next batch is fetched while this one is handled,
        so a handler waiting on its database overlaps with receiving the next messages."""
        await ensure_consumer(self._js, self.spec)
        psub = _Puller(self._js, self.spec.stream, self.spec.durable, max_messages=self._batch)
        await psub.start()
        self._log.info("consuming", filter=list(self.spec.filter_subjects), batch=self._batch)
        failures = 0
        fetching: asyncio.Task[list[Msg]] | None = asyncio.create_task(psub.fetch(self._batch, self._fetch_timeout))
        while fetching is not None:
            try:
                msgs = await fetching
            except (nats.errors.TimeoutError, TimeoutError):
                msgs = []
            except Exception as e:  # disconnected, server restarting, consumer gone...
                failures += 1
                await self._fetch_failed(e, failures)
                msgs = []
            else:
                failures = 0
            fetching = None if stop.is_set() else asyncio.create_task(psub.fetch(self._batch, self._fetch_timeout))
            self._prefetch = fetching
            if msgs:
                await self._dispatch(msgs, stop)
        if self._tasks:  # finish (and ack) what was fetched
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._prefetch = None
        await psub.stop()
        self._log.info("stopped consuming")

    async def _ping_prefetched(self) -> None:
        """Keep a batch fetched ahead ours while the current one waits out an outage."""
        task = self._prefetch
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            for m in task.result():
                await _quietly(m.in_progress())

    async def _dispatch(self, msgs: list[Msg], stop: asyncio.Event) -> None:
        items = await self._decoded(msgs)
        if not items:
            return
        if self._in_flight == 1:
            await self._run_batch(items, stop)
            return
        # Up to in_flight batches handled at once (each acked after its own handler
        # returns), so a handler can prepare one batch while the previous is being written.
        while len(self._tasks) >= self._in_flight:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(self._run_batch(items, stop))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, items: Sequence[tuple[T, Delivery]], stop: asyncio.Event) -> None:
        outage = 0
        while True:
            try:
                await self._batch_handler(items)
            except Exception as e:
                if self._transient(e):
                    outage += 1
                    if stop.is_set():
                        self._log.warning("stopping during an outage; handing the batch back", size=len(items))
                        for _, d in items:
                            await _quietly(d.nak())
                        return
                    delay = min(self._retry_cap_s, self._retry_base_s * 2 ** min(outage - 1, 30))
                    self._log.warning(
                        "dependency unavailable; holding the batch and retrying",
                        size=len(items),
                        attempt=outage,
                        delay_s=delay,
                        error=repr(e),
                    )
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except TimeoutError:
                        pass
                    for _, d in items:
                        await _quietly(d.in_progress())
                    await self._ping_prefetched()
                    continue
                if len(items) > 1:
                    self._log.warning("batch failed; retrying its messages one by one", size=len(items), error=repr(e))
                    for item in items:
                        await self._run_batch([item], stop)
                    return
                await self._failed(items[0][1], e)
                return
            for _, d in items:
                await _quietly(d.ack())
            if outage:
                self._log.info("dependency back; batch done", size=len(items), attempts=outage + 1)
            return

    async def _failed(self, d: Delivery, e: Exception) -> None:
        subject = d.msg.subject
        if isinstance(e, Poison):
            await self._dead_letter(d, str(e))
            return
        n = d.num_delivered
        if n >= self._give_up_after:
            self._log.error("giving up", subject=subject, deliveries=n, exc_info=e)
            await self._dead_letter(d, f"gave up after {n} deliveries: {e!r}")
            return
        delay = retry_delay(n)
        self._log.warning("handler failed; will retry", subject=subject, deliveries=n, delay_s=delay, error=repr(e))
        await d.nak(delay=delay)


async def _quietly(op: Awaitable[None]) -> None:
    """An ack/nak/in-progress that cannot be sent (NATS reconnecting) just means a redelivery later."""
    try:
        await op
    except Exception as e:
        log.warning("ack-type reply not sent; the message will be redelivered", error=repr(e))
