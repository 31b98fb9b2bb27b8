"""One consumer's cost per message: ``Consumer`` (standing pull, direct delivery, ack) with a
handler that does nothing, over a backlog of stored events; CPU µs per consumed and acked
message in this process, and messages/s. ``python -m tests.bench consumer``."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import msgspec
import nats

from schemas import subjects as s
from services.devstack import NatsServer
from services.runtime.consumer import Consumer
from services.runtime.delivery import Delivery

N = int(os.environ.get("BENCH_CONSUMER_MESSAGES", "60000"))
ROUNDS = 3


class _Event(msgspec.Struct):
    job_id: str


async def _round(n: int) -> tuple[float, float]:
    with NatsServer(None) as srv:
        nc = await nats.connect(srv.url)
        js = nc.jetstream()
        await js.add_stream(name="BENCH", subjects=["bench.x"])
        body = msgspec.json.encode({"job_id": "x" * 36, "pad": "y" * 300})
        for i in range(0, n, 1000):
            await asyncio.gather(
                *(
                    js.publish("bench.x", body, headers={s.MSG_ID_HEADER: uuid.uuid4().hex})
                    for _ in range(min(1000, n - i))
                )
            )
        spec = s.ConsumerSpec(stream="BENCH", durable="bench", filter_subjects=("bench.x",), description="bench")
        done, stop, seen = asyncio.Event(), asyncio.Event(), 0

        async def handler(_: _Event, __: Delivery) -> None:
            nonlocal seen
            seen += 1
            if seen == n:
                done.set()

        consumer = Consumer(js, spec, msgspec.json.Decoder(_Event), handler, service="bench")
        cpu, wall = time.process_time(), time.perf_counter()
        task = asyncio.create_task(consumer.run(stop))
        await done.wait()
        await nc.flush()  # the last acks are out
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        stop.set()
        await task
        await nc.close()
    return 1e6 * cpu / n, n / wall


async def run() -> dict[str, Any]:
    rounds = [await _round(N) for _ in range(ROUNDS)]
    return {
        "messages": N,
        "cpu_us_per_message": [round(c, 1) for c, _ in rounds],
        "messages_per_s": [round(r) for _, r in rounds],
    }


def markdown(r: dict[str, Any]) -> str:
    best = min(r["cpu_us_per_message"])
    return (
        f"### One consumer's cost per message ({r['messages']} stored events, no-op handler, {ROUNDS} rounds)\n\n"
        f"CPU µs per consumed and acked message: {', '.join(map(str, r['cpu_us_per_message']))} "
        f"(best {best}); messages/s: {', '.join(map(str, r['messages_per_s']))}"
    )
