"""services.runtime.consumer.Consumer against a real nats-server: the standing pull.

A consumer keeps one pull request open and tops it up, instead of a request per fetch; it
must still deliver every message, and resume after the server restarts (which forgets
every open pull request).
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from services.devstack import NatsServer
from services.runtime.consumer import Consumer
from services.runtime.delivery import Delivery
from services.runtime.puller import Puller
from services.runtime.streams import ensure_consumer, ensure_streams
from tests.support.events import small_submitted, submissions_consumer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

CONSUMER = submissions_consumer("test-standing")
decoder = msgspec.json.Decoder(ev.JobSubmitted)


def submitted(i: int) -> ev.JobSubmitted:
    return small_submitted(f"j{i}")


async def publish(nc: Client, i: int) -> None:
    e = submitted(i)
    await nc.jetstream().publish(s.JOB_SUBMITTED, ev.encode(e), headers={s.MSG_ID_HEADER: e.event_id})


class Seen:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.arrived = asyncio.Event()

    async def on(self, event: ev.JobSubmitted, _: Delivery) -> None:
        self.ids.append(event.job_id)
        self.arrived.set()

    async def next(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.arrived.wait(), timeout)
        self.arrived.clear()


async def test_one_message_at_a_time_needs_far_fewer_pull_requests_than_messages(nc: Client) -> None:
    await ensure_streams(nc.jetstream())
    pulls: list[Msg] = []

    async def count(msg: Msg) -> None:
        pulls.append(msg)

    await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{CONSUMER.stream}.{CONSUMER.durable}", cb=count)
    seen, stop = Seen(), asyncio.Event()
    task = asyncio.create_task(Consumer(nc.jetstream(), CONSUMER, decoder, seen.on, service="test", batch=64).run(stop))
    try:
        for i in range(200):  # a trickle: each message is handled before the next is published
            await publish(nc, i)
            await seen.next()
        assert seen.ids == [f"j{i}" for i in range(200)]
        # about one top-up per half batch (32 messages), not one or two requests per message
        assert len(pulls) <= 200 // 32 + 3, len(pulls)

        # the last handler has returned, but its ack may not be sent yet: stop the consumer
        # (it finishes what it holds), and let the server take what this connection sent
        stop.set()
        await asyncio.wait_for(task, 10)
        await nc.flush()
        info = await nc.jetstream().consumer_info(CONSUMER.stream, CONSUMER.durable)
        assert info.num_ack_pending == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_consuming_resumes_promptly_after_the_server_is_killed_and_restarted(
    nc: Client, nats_server: NatsServer
) -> None:
    await ensure_streams(nc.jetstream())
    seen, stop = Seen(), asyncio.Event()
    task = asyncio.create_task(Consumer(nc.jetstream(), CONSUMER, decoder, seen.on, service="test", batch=64).run(stop))
    try:
        await publish(nc, 0)
        await seen.next()
        nats_server.kill()  # no goodbye: no 409 "Server Shutdown" tells the consumer its pull is gone
        nats_server.start()
        for _ in range(100):  # publish once the client is back
            with contextlib.suppress(Exception):
                await publish(nc, 1)
                break
            await asyncio.sleep(0.1)

        # well before the pull request would have expired (10 s): the reconnect resets the credit
        async def until_j1() -> None:
            while "j1" not in seen.ids:
                await seen.next()

        await asyncio.wait_for(until_j1(), 5.0)
        assert set(seen.ids) == {"j0", "j1"}  # j0 maybe twice: its ack may have died with the server
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_skipped_events_are_acked_without_running_the_handler(nc: Client) -> None:
    await ensure_streams(nc.jetstream())
    seen, stop = Seen(), asyncio.Event()

    def odd(e: ev.JobSubmitted) -> bool:
        return int(e.job_id[1:]) % 2 == 1

    consumer = Consumer(nc.jetstream(), CONSUMER, decoder, seen.on, service="test", batch=64, skip=odd)
    for i in range(20):
        await publish(nc, i)
    task = asyncio.create_task(consumer.run(stop))
    try:
        while len(seen.ids) < 10:
            await seen.next()
        assert sorted(seen.ids, key=lambda j: int(j[1:])) == [f"j{i}" for i in range(0, 20, 2)]
        stop.set()
        await asyncio.wait_for(task, 10)
        await nc.flush()
        info = await nc.jetstream().consumer_info(CONSUMER.stream, CONSUMER.durable)
        assert (info.num_ack_pending, info.num_pending) == (0, 0)  # the skipped ones were acked too
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_in_order_by_key_keeps_each_keys_order_and_runs_keys_side_by_side(nc: Client) -> None:
    """``in_order`` with ``order_key``, on one fetched batch of 20: the first event of key ``even``
    waits until every event of key ``odd`` was handled, which can only happen if the keys run side
    by side; each key's events are still handled in stream order, and all 20 are acked.

    The batch is fetched by the test (a fetch returns as soon as its first message is buffered, so
    the consumer's own first batch may hold fewer than 20, and keys only run side by side within a
    batch) and handed to the consumer's dispatch, which is what its loop does with every batch."""
    await ensure_streams(nc.jetstream())
    handled: dict[str, list[int]] = {"even": [], "odd": []}
    odd_done = asyncio.Event()

    def parity(e: ev.JobSubmitted) -> str:
        return "odd" if int(e.job_id[1:]) % 2 else "even"

    async def on(event: ev.JobSubmitted, _: Delivery) -> None:
        n = int(event.job_id[1:])
        if n == 0:
            await asyncio.wait_for(odd_done.wait(), 10)
        await asyncio.sleep(0)  # let the other key in between
        handled[parity(event)].append(n)
        if len(handled["odd"]) == 10:
            odd_done.set()

    js = nc.jetstream()
    consumer = Consumer(js, CONSUMER, decoder, on, service="test", batch=64, in_order=True, order_key=parity)
    for i in range(20):
        await publish(nc, i)
    await ensure_consumer(js, CONSUMER)
    puller = Puller(js, CONSUMER.stream, CONSUMER.durable, max_messages=64)
    await puller.start()
    batch: list[Msg] = []
    try:
        while len(batch) < 20:
            got = await puller.fetch(64, timeout=10)
            assert got, f"only {len(batch)} of 20 events delivered"
            batch += got
        await asyncio.wait_for(consumer._dispatch(batch, asyncio.Event()), 20)
    finally:
        await puller.stop()
    assert handled == {"even": list(range(0, 20, 2)), "odd": list(range(1, 20, 2))}

    async def all_acked() -> bool:
        info = await js.consumer_info(CONSUMER.stream, CONSUMER.durable)
        return info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(all_acked, timeout=10, what="all 20 acked")
