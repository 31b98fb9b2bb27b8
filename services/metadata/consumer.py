"""The metadata consumers: :class:`~services.runtime.consumer.BatchConsumer` with batches in flight.

``BatchConsumer`` hands a batch to its handler and waits for the handler before it decodes the
next batch, so one stream's batches reach PostgreSQL one at a time, each after the previous one
committed. Here up to ``in_flight`` batches per consumer are handled at once: the projector can
prepare the next batch (decode, merge views) while the previous one is being written. Every
batch keeps ``BatchConsumer``'s outcomes (acked after its commit; held and retried through an
outage; poison isolated and dead-lettered), run by its own task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import subjects as s
from services.runtime.consumer import BatchConsumer, BatchHandler, Delivery

T = TypeVar("T")


class PipelinedBatchConsumer(BatchConsumer[T]):
    """A :class:`BatchConsumer` that keeps fetching while up to ``in_flight`` batches are handled."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: s.ConsumerSpec,
        decoder: msgspec.json.Decoder[T],
        handler: BatchHandler[T],
        *,
        service: str,
        batch: int = 1000,
        transient: Callable[[BaseException], bool],
        in_flight: int = 2,
    ) -> None:
        super().__init__(js, spec, decoder, handler, service=service, batch=batch, transient=transient)
        self._in_flight = in_flight
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await super().run(stop)
        finally:
            if self._tasks:  # finish (and ack) what was fetched
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _dispatch(self, msgs: list[Msg], stop: asyncio.Event) -> None:
        items: list[tuple[T, Delivery]] = []
        for m in msgs:
            d = Delivery(m)
            try:
                items.append((self._decoder.decode(m.data), d))
            except (ValueError, RecursionError) as e:  # msgspec.DecodeError is a ValueError; deterministic: poison
                await self._dead_letter(d, f"undecodable {m.subject} payload: {e!r}"[:2000])
        if not items:
            return
        while len(self._tasks) >= self._in_flight:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(self._run_batch(items, stop))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
