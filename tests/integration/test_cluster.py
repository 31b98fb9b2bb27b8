"""A real 3-node NATS cluster (the one `make cluster` runs): streams with 3 replicas survive losing a server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import nats.errors
import pytest
from nats.js import api as js_api
from nats.js.errors import APIError, NoStreamResponseError

from schemas import subjects as s
from services.devstack.cluster import NatsCluster
from services.runtime.publisher import Ack, Publisher
from services.runtime.streams import ensure_streams
from tests.support.chains import a_stale_chain_is_refused_whole
from tests.support.events import decided
from tests.support.servers import nats_auth

pytestmark = pytest.mark.integration

T = TypeVar("T")


async def retrying(what: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """Until the cluster answers: a meta or stream leader is being elected (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await what()
        except (APIError, NoStreamResponseError, nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_replicated_streams_survive_a_dead_server(tmp_path: Path) -> None:
    with NatsCluster(tmp_path) as cluster:
        nc = await nats.connect(cluster.url.split(","), reconnect_time_wait=0.2, **nats_auth("services"))
        try:
            js = nc.jetstream(timeout=5)
            await retrying(lambda: ensure_streams(js, replicas=3))
            info = await js.stream_info(s.JOBS.name)
            assert info.config.num_replicas == 3

            async def publish(i: int) -> None:  # a retried publish is deduplicated by its id
                await js.publish(s.JOB_SUBMITTED, f"{i}".encode(), headers={s.MSG_ID_HEADER: f"m-{i}"})

            for i in range(5):
                await retrying(lambda i=i: publish(i))  # type: ignore[misc]

            # a durable consumer replicated like its stream (created while every server is up)
            sub = await js.pull_subscribe(
                s.JOB_SUBMITTED, durable="reader", stream=s.JOBS.name,
                config=js_api.ConsumerConfig(num_replicas=3),
            )  # fmt: skip

            # kill the server leading JOBS: a follower takes over with every message
            leader = (await js.stream_info(s.JOBS.name)).cluster
            assert leader is not None and leader.leader is not None
            victim = next(srv for srv in cluster.servers if srv.extra_args[1] == leader.leader)
            victim.kill()
            for i in range(5, 10):
                await retrying(lambda i=i: publish(i))  # type: ignore[misc]
            info = await retrying(lambda: js.stream_info(s.JOBS.name))
            assert info.state.messages == 10
            assert info.cluster is not None and info.cluster.leader != leader.leader

            got: list[bytes] = []
            while (missing := 10 - len(got)) > 0:
                got += [m.data for m in await retrying(lambda n=missing: sub.fetch(n, timeout=5))]  # type: ignore[misc]
            assert got == [f"{i}".encode() for i in range(10)]
        finally:
            await nc.close()


async def test_a_stale_placement_batch_is_refused_whole_by_a_replicated_stream(tmp_path: Path) -> None:
    """On an R3 stream placement commits atomic batches (see ``Publisher.publish_chain``): the
    stream leader refuses a stale one whole and goes on storing."""
    with NatsCluster(tmp_path) as cluster:
        nc = await nats.connect(cluster.url.split(","), reconnect_time_wait=0.2, **nats_auth("admin"))
        try:
            js = nc.jetstream(timeout=5)
            await retrying(lambda: ensure_streams(js, [s.PLACEMENTS], replicas=3))
            await retrying(lambda: js.stream_info(s.PLACEMENTS.name))
            await a_stale_chain_is_refused_whole(js, atomic=True)
            after = await Publisher(js).publish_chain([decided("next")], 2, atomic=True)
            assert isinstance(after[0], Ack) and after[0].seq == 3
        finally:
            await nc.close()
