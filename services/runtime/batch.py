"""A batch consumer: each fetched batch handled by one handler (one database transaction) and acked whole."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import subjects as s
from services.runtime.backoff import delay, sleep_unless
from services.runtime.consumer import Consumer
from services.runtime.delivery import Delivery, quietly
from services.runtime.puller import Puller
from services.runtime.streams import ensure_consumer

log = structlog.get_logger()

T = TypeVar("T")

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
        self._give_up_after = max(1, give_up_after)  # the n-th delivery, n >= 1, gives up
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s

    async def _single(self, event: T, d: Delivery) -> None:
        await self._batch_handler([(event, d)])

    async def run(self, stop: asyncio.Event) -> None:
        """Like :meth:`Consumer.run`, but the next batch is fetched while this one is handled,
        so a handler waiting on its database overlaps with receiving the next messages."""
        await ensure_consumer(self.js, self.spec)
        psub = Puller(self.js, self.spec.stream, self.spec.durable, max_messages=self.batch)
        await psub.start()
        self._log.info("consuming", filter=list(self.spec.filter_subjects), batch=self.batch)
        failures = 0
        fetching: asyncio.Task[list[Msg]] | None = asyncio.create_task(psub.fetch(self.batch, self.fetch_timeout))
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
            fetching = None if stop.is_set() else asyncio.create_task(psub.fetch(self.batch, self.fetch_timeout))
            self._prefetch = fetching
            if msgs:
                self._watch_retention()
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
                await quietly(m.in_progress())

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
                            await quietly(d.nak())
                        return
                    wait = delay(outage, base=self._retry_base_s, cap=self._retry_cap_s)
                    self._log.warning(
                        "dependency unavailable; holding the batch and retrying",
                        size=len(items),
                        attempt=outage,
                        delay_s=wait,
                        error=repr(e),
                    )
                    await sleep_unless(stop, wait)
                    for _, d in items:
                        await quietly(d.in_progress())
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
                await quietly(d.ack())
            if outage:
                self._log.info("dependency back; batch done", size=len(items), attempts=outage + 1)
            return

    async def _failed(self, d: Delivery, e: Exception) -> None:
        await self._settle(d, e, max_deliver=self._give_up_after)
