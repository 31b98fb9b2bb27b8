"""services.runtime.consumer.BatchConsumer against a real nats-server: one handler call per fetched batch,
acks after it returns, outages held (not nakked, not dead-lettered), poison isolated and dead-lettered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from schemas import events as ev
from schemas import subjects as s
from services.runtime.batch import BatchConsumer
from services.runtime.delivery import Delivery
from services.runtime.streams import ensure_streams
from tests.support.events import small_submitted, submissions_consumer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

CONSUMER = submissions_consumer("test-batch", max_deliver=-1)
decoder = msgspec.json.Decoder(ev.JobSubmitted)


class Outage(Exception):
    pass


def is_outage(e: BaseException) -> bool:
    return isinstance(e, Outage)


async def prefill(js: JetStreamContext, job_ids: Sequence[str]) -> None:
    await ensure_streams(js)
    for j in job_ids:
        e = small_submitted(j)
        await js.publish(s.JOB_SUBMITTED, ev.encode(e), headers={s.MSG_ID_HEADER: e.event_id})


async def settled(js: JetStreamContext) -> bool:
    try:
        info = await js.consumer_info(CONSUMER.stream, CONSUMER.durable)
    except NotFoundError:  # not declared yet
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0


async def dead_letters(js: JetStreamContext) -> list[dict[str, object]]:
    info = await js.stream_info(s.DEADLETTERS.name)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else []:
        out.append(json.loads((await js.get_msg(s.DEADLETTERS.name, seq)).data or b"{}"))
    return out


class Run:
    """Runs a BatchConsumer in a task; stop() ends it like SIGTERM."""

    def __init__(self, consumer: BatchConsumer[ev.JobSubmitted]) -> None:
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(consumer.run(self.stop_event))

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 10)


async def test_one_call_per_batch_and_acked_after_it_returns(nc: Client) -> None:
    js = nc.jetstream()
    ids = [f"j{i}" for i in range(40)]
    await prefill(js, ids)
    batches: list[list[str]] = []
    acked_before_return: list[bool] = []

    async def handler(items: Sequence[tuple[ev.JobSubmitted, Delivery]]) -> None:
        batches.append([e.job_id for e, _ in items])
        acked_before_return.append(any(d.done for _, d in items))

    run = Run(BatchConsumer(js, CONSUMER, decoder, handler, service="test", batch=25))
    try:
        await eventually(lambda: settled(js), what="all acked")
    finally:
        await run.stop()
    assert [j for b in batches for j in b] == ids  # each once, in stream order
    # a fetch hands over what the standing pull has buffered, up to the batch size
    assert all(1 <= len(b) <= 25 for b in batches)
    assert not any(acked_before_return)


async def test_an_outage_holds_the_batch_without_nak_or_dead_letter(nc: Client) -> None:
    js = nc.jetstream()
    await prefill(js, ["a", "b", "c"])
    calls: list[list[int]] = []

    async def handler(items: Sequence[tuple[ev.JobSubmitted, Delivery]]) -> None:
        calls.append([d.num_delivered for _, d in items])
        if len(calls) <= 3:
            raise Outage("database down")

    consumer = BatchConsumer(
        js, CONSUMER, decoder, handler, service="test", transient=is_outage, give_up_after=1, retry_base_s=0.01
    )
    run = Run(consumer)
    try:
        await eventually(lambda: settled(js), what="acked after the outage")
    finally:
        await run.stop()
    # the same batch, whole, retried in place: never redelivered, never split, never dead-lettered
    assert calls == [[1, 1, 1]] * 4
    assert await dead_letters(js) == []
    info = await js.consumer_info(CONSUMER.stream, CONSUMER.durable)
    assert info.num_redelivered == 0


async def test_stopping_during_an_outage_hands_the_batch_back(nc: Client) -> None:
    js = nc.jetstream()
    await prefill(js, ["a", "b"])
    seen = asyncio.Event()

    async def down(items: Sequence[tuple[ev.JobSubmitted, Delivery]]) -> None:
        seen.set()
        raise Outage("database down")

    run = Run(BatchConsumer(js, CONSUMER, decoder, down, service="test", transient=is_outage, retry_base_s=0.01))
    await asyncio.wait_for(seen.wait(), 10)
    await run.stop()
    got: list[str] = []

    async def up(items: Sequence[tuple[ev.JobSubmitted, Delivery]]) -> None:
        got.extend(e.job_id for e, _ in items)

    run = Run(BatchConsumer(js, CONSUMER, decoder, up, service="test"))
    try:
        await eventually(lambda: settled(js), what="the next instance projected them")
    finally:
        await run.stop()
    assert sorted(got) == ["a", "b"] and await dead_letters(js) == []  # redelivery order is the server's


async def test_a_failing_message_is_isolated_and_dead_lettered_the_rest_acked(nc: Client) -> None:
    js = nc.jetstream()
    await prefill(js, ["ok1", "bad", "ok2"])
    await js.publish(s.JOB_SUBMITTED, b"\x00not json", headers={s.MSG_ID_HEADER: "garbage"})
    deep = b'{"type": "job.submitted", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # RecursionError
    await js.publish(s.JOB_SUBMITTED, deep, headers={s.MSG_ID_HEADER: "deep"})
    done: list[str] = []

    async def handler(items: Sequence[tuple[ev.JobSubmitted, Delivery]]) -> None:
        if any(e.job_id == "bad" for e, _ in items):
            raise ValueError("cannot project this one")
        done.extend(e.job_id for e, _ in items)

    run = Run(BatchConsumer(js, CONSUMER, decoder, handler, service="test", give_up_after=2))
    try:
        await eventually(lambda: settled(js), what="settled")
    finally:
        await run.stop()
    assert sorted(done) == ["ok1", "ok2"]
    letters = await dead_letters(js)
    reasons = sorted(str(letter["reason"]) for letter in letters)
    assert len(reasons) == 3
    assert reasons[0].startswith("gave up after 2 deliveries") and "cannot project" in reasons[0]
    assert reasons[1].startswith("undecodable") and reasons[2].startswith("undecodable")
    assert any("RecursionError" in r for r in reasons)
