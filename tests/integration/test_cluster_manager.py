"""The Cluster Manager reads every placement decision at least once (§8.6), as the ``manager`` user
of nats.conf: through the durable ``cluster-manager`` on PLACEMENTS, which the services declare at
start-up. It pulls and acks, finds on its return what was decided while it was away, and may replay
through ephemeral and ordered consumers of its own; it may not create, change or delete a durable,
read another's, publish an event or delete a stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from schemas import subjects as s
from services.devstack import NatsServer
from services.runtime.streams import consumer_config, ensure_streams, same_consumer
from tests.support.api import job
from tests.support.events import node
from tests.support.permissions import Violations
from tests.support.servers import Spawn, nats_auth

pytestmark = pytest.mark.integration

PLACEMENTS = s.PLACEMENTS.name
DURABLE = s.CLUSTER_MANAGER.durable


Connect = Callable[[], Awaitable[tuple[Client, Violations]]]


@pytest.fixture
async def as_manager(nats_server: NatsServer) -> AsyncIterator[Connect]:
    clients: list[Client] = []

    async def connect() -> tuple[Client, Violations]:
        v = Violations()
        client = await nats.connect(nats_server.url, error_cb=v.cb, allow_reconnect=False, **nats_auth("manager"))
        clients.append(client)
        return client, v

    yield connect
    for client in clients:
        await client.close()


async def decide(nc: Client, name: str) -> str:
    """A placement.request answered with a decision: its job id."""
    reply = await nc.request(s.PLACEMENT_REQUEST, job(name, 1), timeout=10)
    body = json.loads(reply.data)
    assert body["type"] == s.PLACEMENT_DECIDED, body
    return str(body["job_id"])


async def pull_all(sub: JetStreamContext.PullSubscription, count: int) -> list[Msg]:
    """``count`` messages from a pull subscription (fetched in as many batches as they take)."""
    got: list[Msg] = []
    while len(got) < count:
        got += await sub.fetch(count - len(got), timeout=10)
    return got


async def test_the_manager_reads_every_decision_at_least_once_even_those_made_while_away(
    nc: Client, services: Spawn, as_manager: Connect
) -> None:
    await services("gateway", "intake", "placement")  # their start-up declared cluster-manager
    await node(nc, "n1", 16.0)
    manager, v = await as_manager()
    js = manager.jetstream(timeout=5)
    info = await js.consumer_info(PLACEMENTS, DURABLE)
    assert same_consumer(consumer_config(s.CLUSTER_MANAGER), info.config)
    assert info.config.ack_policy == js_api.AckPolicy.EXPLICIT
    assert info.config.deliver_policy == js_api.DeliverPolicy.ALL
    assert set(info.config.filter_subjects or ()) == set(s.PLACEMENTS.subjects)

    first = await decide(nc, "before")
    sub = await js.pull_subscribe_bind(durable=DURABLE, stream=PLACEMENTS)
    (msg,) = await pull_all(sub, 1)
    assert msg.subject == s.PLACEMENT_DECIDED and json.loads(msg.data)["job_id"] == first
    await msg.ack_sync()
    await manager.close()  # away

    away = {await decide(nc, f"away-{i}") for i in range(3)}

    manager, v = await as_manager()  # back: every decision made meanwhile, none lost, none acked twice
    js = manager.jetstream(timeout=5)
    sub = await js.pull_subscribe_bind(durable=DURABLE, stream=PLACEMENTS)
    msgs = await pull_all(sub, 3)
    assert {json.loads(m.data)["job_id"] for m in msgs} == away
    for m in msgs:
        await m.ack_sync()
    info = await js.consumer_info(PLACEMENTS, DURABLE)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert await v.settle(manager) == []


async def test_declaring_the_durable_again_leaves_it_as_it_is(nc: Client, as_manager: Connect) -> None:
    js = nc.jetstream(timeout=5)
    await ensure_streams(js, [s.PLACEMENTS])
    created = (await js.consumer_info(PLACEMENTS, DURABLE)).created
    await ensure_streams(js, [s.PLACEMENTS])  # another service starting
    again = await js.consumer_info(PLACEMENTS, DURABLE)
    assert again.created == created and same_consumer(consumer_config(s.CLUSTER_MANAGER), again.config)


async def test_the_manager_may_replay_through_ephemeral_and_ordered_consumers(
    nc: Client, services: Spawn, as_manager: Connect
) -> None:
    await services("gateway", "intake", "placement")
    await node(nc, "n1", 16.0)
    job_id = await decide(nc, "replayed")
    manager, v = await as_manager()
    js = manager.jetstream(timeout=5)

    # an ephemeral push consumer: acks none (it may ack cluster-manager's deliveries only, see below)
    replay = js_api.ConsumerConfig(ack_policy=js_api.AckPolicy.NONE)
    push = await js.subscribe(s.PLACEMENT_DECIDED, stream=PLACEMENTS, config=replay)
    msg = await push.next_msg(timeout=10)
    assert json.loads(msg.data)["job_id"] == job_id
    await push.unsubscribe()

    ordered = await js.subscribe(s.PLACEMENT_DECIDED, stream=PLACEMENTS, ordered_consumer=True)
    msg = await ordered.next_msg(timeout=10)
    assert json.loads(msg.data)["job_id"] == job_id
    await ordered.unsubscribe()
    assert await v.settle(manager) == []


async def test_the_manager_cannot_create_change_or_delete_a_durable_read_anothers_or_write(
    nc: Client, as_manager: Connect
) -> None:
    await ensure_streams(nc.jetstream(timeout=5), [s.PLACEMENTS])
    manager, v = await as_manager()
    api = "$JS.API"

    async def denied(subject: str, body: bytes = b"{}", *, what: str = "publish to") -> None:
        await manager.publish(subject, body, reply=manager.new_inbox())
        (violation,) = await v.settle(manager)
        assert f'{what} "{subject.lower()}"' in violation, violation

    durable = json.dumps({"stream_name": PLACEMENTS, "config": {"durable_name": "mine", "ack_policy": "explicit"}})
    await denied(f"{api}.CONSUMER.CREATE.{PLACEMENTS}.mine", durable.encode())  # a durable, named
    await denied(f"{api}.CONSUMER.DURABLE.CREATE.{PLACEMENTS}.mine", durable.encode())  # the legacy form
    await denied(f"{api}.CONSUMER.CREATE.{PLACEMENTS}.{DURABLE}")  # change its own
    await denied(f"{api}.CONSUMER.DELETE.{PLACEMENTS}.{DURABLE}")
    for other in (s.PROVISIONER_DECISIONS, s.TEARDOWN_PLACEMENTS, s.TENANT_RELAY):
        await denied(f"{api}.CONSUMER.MSG.NEXT.{other.stream}.{other.durable}")  # read another's
        await denied(f"{api}.CONSUMER.DELETE.{other.stream}.{other.durable}")
        await denied(f"{api}.CONSUMER.CREATE.{other.stream}.{other.durable}")
        await denied(f"$JS.ACK.{other.stream}.{other.durable}.1.1.1.1.0")  # ack (lose) another's delivery
    await denied(s.PLACEMENT_DECIDED)  # an event
    await denied(s.PLACEMENTS.capture[0].replace("*", "decided"))  # its commit subject
    await denied(f"{api}.STREAM.DELETE.{PLACEMENTS}")
    await denied(f"{api}.STREAM.UPDATE.{PLACEMENTS}")
    await manager.subscribe(f"{s.SERVICES_INBOX_PREFIX}.>")  # the services' replies
    (violation,) = await v.settle(manager)
    assert f'subscription to "{s.SERVICES_INBOX_PREFIX.lower()}.>"' in violation

    # the one creation subject it may use makes ephemeral consumers only: a durable name is refused
    reply = await manager.request(f"{api}.CONSUMER.CREATE.{PLACEMENTS}", durable.encode(), timeout=5)
    assert "error" in json.loads(reply.data), reply.data
    with pytest.raises(nats.js.errors.NotFoundError):
        await nc.jetstream().consumer_info(PLACEMENTS, "mine")
    assert await v.settle(manager) == []
