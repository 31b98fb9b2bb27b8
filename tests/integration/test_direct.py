"""services.runtime.direct against a real nats-server and nats-py's own parsing.

Direct delivery relies on nats-py internals (``Client._process_msg`` called per message,
``Subscription._id``); these tests fail if a nats-py upgrade changes either.
"""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.runtime import direct

pytestmark = pytest.mark.integration


async def test_routed_messages_arrive_raw_and_others_as_before(nc: Client) -> None:
    got: list[tuple[bytes, bytes, bytes, bytes | None]] = []
    arrived = asyncio.Event()

    def route(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        got.append((subject, reply, data, headers))
        if len(got) == 2:
            arrived.set()

    plain: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await direct.subscribe(nc, "direct.>", route)
    await nc.subscribe("plain.x", cb=plain.put)
    before = nc.stats["in_msgs"]

    await nc.publish("direct.a", b"one", reply="r.1")
    await nc.publish("direct.b", b"two", headers={"Nats-Msg-Id": "m-2"})
    await nc.publish("plain.x", b"three", headers={"K": "v"})
    await asyncio.wait_for(arrived.wait(), 5)
    m = await asyncio.wait_for(plain.get(), 5)

    assert got[0] == (b"direct.a", b"r.1", b"one", None)
    subject, reply, data, headers = got[1]
    assert (subject, reply, data) == (b"direct.b", b"", b"two")
    assert headers is not None and b"Nats-Msg-Id: m-2" in headers
    assert (m.subject, m.data, m.headers) == ("plain.x", b"three", {"K": "v"})
    assert nc.stats["in_msgs"] == before + 3

    await direct.unsubscribe(nc, sub)
    await nc.publish("direct.c", b"gone")
    await nc.publish("plain.x", b"four")
    assert (await asyncio.wait_for(plain.get(), 5)).data == b"four"  # after direct.c, same connection
    assert len(got) == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 12\r\nNats-Pending-Bytes: 3400\r\n\r\n",
        b"NATS/1.0 409 Exceeded MaxAckPending\r\nNats-Pending-Messages: 5\r\n\r\n",
        b"NATS/1.0 409 Consumer Deleted\r\n\r\n",
        b"NATS/1.0 404 No Messages\r\n\r\n",
        b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 7\r\nNats-Last-Stream: 9\r\n\r\n",
    ],
)
async def test_status_parsing_agrees_with_nats_py(nc: Client, raw: bytes) -> None:
    theirs = await nc._process_headers(raw)
    assert theirs is not None
    parsed = direct.status_of(raw)
    assert parsed is not None
    status, headers = parsed
    assert status == theirs.pop("Status")
    assert headers == theirs


def test_plain_headers_are_not_a_status() -> None:
    assert direct.status_of(None) is None
    assert direct.status_of(b"NATS/1.0\r\nNats-Msg-Id: x\r\n\r\n") is None


async def test_a_failing_route_does_not_end_the_connections_read_loop(nc: Client) -> None:
    got: list[bytes] = []
    arrived = asyncio.Event()

    def route(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if data == b"boom":
            raise RecursionError("maximum recursion depth exceeded")  # what msgspec raises on deep nesting
        got.append(data)
        arrived.set()

    await direct.subscribe(nc, "direct.fail", route)
    await nc.publish("direct.fail", b"boom")
    await nc.publish("direct.fail", b"after")
    await asyncio.wait_for(arrived.wait(), 5)
    assert got == [b"after"]
    assert nc.is_connected
