"""Every service instance answers NATS micro discovery ($SRV.PING/INFO/STATS), as the monitor user sees it."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import subjects as s
from services.cli.main import run
from services.devstack import NatsServer
from services.devstack.supervisor import SERVICES, has_main
from tests.support.cli import Output
from tests.support.servers import Spawn, nats_auth

pytestmark = pytest.mark.integration

SEMVER = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


async def gather(nc: Client, subject: str, expected: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Scatter-gather: publish once, collect replies until ``expected`` instances answered."""
    replies: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = nc.new_inbox()

    async def on_reply(msg: Msg) -> None:
        replies.put_nowait(msg)

    sub = await nc.subscribe(inbox, cb=on_reply)
    await nc.publish(subject, b"", reply=inbox)
    out = []
    try:
        while len(out) < expected:
            out.append(json.loads((await asyncio.wait_for(replies.get(), timeout)).data))
    finally:
        await sub.unsubscribe()
    return out


async def test_every_instance_answers_ping_info_and_stats(
    nc: Client, services: Spawn, nats_server: NatsServer, database_url: str, ec2_endpoint: str
) -> None:
    names = [n for n in SERVICES if has_main(n)]
    env = {
        "DATABASE_URL": database_url,
        "AWS_ENDPOINT_URL": ec2_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    await services(*names, "gateway", env=env)  # two gateways: every instance answers
    expected = {n: names.count(n) + (n == "gateway") for n in names}
    monitor = await nats.connect(nats_server.url, **nats_auth("monitor"))
    try:
        pings = await gather(monitor, "$SRV.PING", sum(expected.values()))
        assert {p["name"]: sum(q["name"] == p["name"] for q in pings) for p in pings} == expected
        assert len({p["id"] for p in pings}) == len(pings)

        # one bad request: counted as an error by whichever gateway instance answered it
        bad = await nc.request(s.JOB_SUBMIT, b'{"name": "x", "replicas": 0}', timeout=5)
        assert bad.headers and bad.headers[s.ERROR_CODE_HEADER] == "400"

        for name, count in expected.items():
            infos = await gather(monitor, f"$SRV.INFO.{name}", count)
            for info in infos:
                assert info["type"] == "io.nats.micro.v1.info_response"
                assert info["name"] == name and SEMVER.match(info["version"]) and info["description"]
                assert isinstance(info["metadata"], dict) and info["metadata"]["instance_id"]
                for endpoint in info["endpoints"]:
                    assert isinstance(endpoint["metadata"], dict), (name, endpoint)  # never null
                for consumer in filter(None, re.split(r"[,\s]+", info["metadata"].get("consumers", ""))):
                    stream, durable = consumer.split("/")  # named so `nats consumer report` shows the lag
                    assert (await nc.jetstream().consumer_info(stream, durable)).name == durable
            assert len({i["metadata"]["instance_id"] for i in infos}) == count
            stats = await gather(monitor, f"$SRV.STATS.{name}", count)
            assert all(st["type"] == "io.nats.micro.v1.stats_response" for st in stats)
            if name == "gateway":
                submit = [e for st in stats for e in st["endpoints"] if e["subject"] == s.JOB_SUBMIT]
                assert sum(e["num_errors"] for e in submit) == 1
                assert sum(e["num_requests"] for e in submit) == 1
                assert any(e["last_error"].startswith("400") for e in submit)
    finally:
        await monitor.close()

    # a container's health check: is the instance on this host answering?
    out, err = Output(), Output()
    argv = ["ping", "gateway", "--host", socket.gethostname(), "--json", "--server", nats_server.url]
    assert await run(argv, out=out, err=err, env={}) == 0, err.getvalue()
    assert json.loads(out.getvalue())[0]["name"] == "gateway"
    argv = ["ping", "gateway", "--host", "elsewhere", "--timeout", "0.5", "--server", nats_server.url]
    assert await run(argv, out=Output(), err=(err := Output()), env={}) == 3
    assert "no gateway on host elsewhere answered" in err.getvalue()
