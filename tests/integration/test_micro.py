"""services.runtime.micro.MicroService against a real nats-server: every request gets an answer.

A reply over the connection's ``max_payload`` becomes a 413 error reply at once (never a
client timeout), counted in ``$SRV.STATS``; a reply that fails to send for another reason
is followed by a 500 error reply; start and stop are idempotent and ``async with`` works.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import subjects as s
from services.devstack import NatsServer
from services.runtime.micro import MicroService
from tests.support.servers import nats_auth

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
"""Far above what a reply needs: a failure shows as a timeout, never as a slow pass."""


async def stats(nc: Client, name: str) -> dict[str, Any]:
    reply = await nc.request(f"$SRV.STATS.{name}", b"", timeout=TIMEOUT)
    endpoints: list[dict[str, Any]] = json.loads(reply.data)["endpoints"]
    return {e["name"]: e for e in endpoints}


async def test_a_reply_over_max_payload_becomes_413_at_once(nc: Client) -> None:
    name, subject = f"big{uuid.uuid4().hex[:8]}", f"test.big.{uuid.uuid4().hex}"
    too_big = nc.max_payload + 1

    async def handler(msg: Msg) -> bytes:
        return b"x" * too_big

    async def small(msg: Msg) -> bytes:
        return b'{"ok": true}'

    async with MicroService(nc, name=name, version="0.0.1", description="test") as svc:
        await svc.add_endpoint("big", subject, handler)
        await svc.add_endpoint("small", subject + ".small", small)
        reply = await nc.request(subject, b"{}", timeout=TIMEOUT)
        assert (await nc.request(subject + ".small", b"{}", timeout=TIMEOUT)).data == b'{"ok": true}'
        by_endpoint = await stats(nc, name)

    assert reply.headers is not None
    assert reply.headers[s.ERROR_CODE_HEADER] == "413"
    expected = f"reply of {too_big} bytes exceeds max_payload of {nc.max_payload} bytes"
    assert reply.headers[s.ERROR_HEADER] == expected
    assert json.loads(reply.data) == {"error": {"code": 413, "message": expected}}
    assert by_endpoint["big"]["num_requests"] == 1
    assert by_endpoint["big"]["num_errors"] == 1
    assert by_endpoint["big"]["last_error"] == f"413:{expected}"
    assert by_endpoint["small"]["num_errors"] == 0


async def test_body_and_headers_together_are_measured(nc: Client) -> None:
    """An error reply whose body fits but whose headers push it over the limit is caught too
    (nats-py checks the body alone; the server would close the connection)."""
    from services.runtime.micro import RequestError

    subject = f"test.edge.{uuid.uuid4().hex}"

    async def handler(msg: Msg) -> bytes:
        raise RequestError(409, "x" * (nc.max_payload - 200))

    async with MicroService(nc, name=f"edge{uuid.uuid4().hex[:8]}", version="0.0.1", description="test") as svc:
        await svc.add_endpoint("edge", subject, handler)
        reply = await nc.request(subject, b"{}", timeout=TIMEOUT)
    assert reply.headers is not None
    assert reply.headers[s.ERROR_CODE_HEADER] == "413"
    assert nc.is_connected


async def test_a_reply_that_fails_to_send_is_followed_by_500(nats_server: NatsServer, nc: Client) -> None:
    server_side = await nats.connect(nats_server.url, **nats_auth("admin"))
    subject = f"test.flaky.{uuid.uuid4().hex}"
    publish = server_side.publish
    failures = []

    async def flaky(subject: str, payload: bytes = b"", reply: str = "", headers: Any = None) -> None:
        if not failures and subject.startswith("_INBOX"):
            failures.append(subject)
            raise ConnectionError("socket gone")
        await publish(subject, payload, reply=reply, headers=headers)

    async def handler(msg: Msg) -> bytes:
        return b'{"ok": true}'

    server_side.publish = flaky  # type: ignore[method-assign]
    try:
        async with MicroService(
            server_side, name=f"flaky{uuid.uuid4().hex[:8]}", version="0.0.1", description="t"
        ) as svc:
            await svc.add_endpoint("flaky", subject, handler)
            await server_side.flush()  # the subscription is known to the server before the request
            reply = await nc.request(subject, b"{}", timeout=TIMEOUT)
    finally:
        await server_side.close()
    assert failures
    assert reply.headers is not None
    assert reply.headers[s.ERROR_CODE_HEADER] == "500"
    assert "socket gone" in json.loads(reply.data)["error"]["message"]


async def test_start_and_stop_are_idempotent(nc: Client) -> None:
    name = f"idem{uuid.uuid4().hex[:8]}"
    svc = MicroService(nc, name=name, version="0.0.1", description="test")
    await svc.start()
    await svc.start()
    ping = await nc.request(f"$SRV.PING.{name}", b"", timeout=TIMEOUT)
    assert json.loads(ping.data)["name"] == name
    await svc.stop()
    await svc.stop()
    assert svc.stopped.is_set()
    async with svc:  # entering a stopped service does not start it again
        pass
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(f"$SRV.PING.{name}", b"", timeout=TIMEOUT)
