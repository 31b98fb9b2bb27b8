"""Dedicated clusters end to end: real nats-server, real service processes, the real EC2 API (moto).

Faults are injected by a small HTTP proxy in front of moto (``FaultProxy``) that answers
chosen ``RunInstances`` calls with EC2's own error documents, or holds requests to freeze
the provisioner at a chosen point; no boto call is patched.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from nats.aio.client import Client

from schemas import subjects as s
from tests.support.api import request, submit
from tests.support.config import DEDICATED_PATH, PROJECT, aws_env, write_config
from tests.support.ec2 import LIVE, TAG, instances
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration

_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
)


class FaultProxy:
    """Forwards EC2 requests to moto, except the ones it was told to break.

    - ``fail_types``: instance type -> (HTTP status, EC2 error code) for RunInstances;
    - ``fail_runs``: n-th RunInstances call (1-based) -> (status, code);
    - ``hold_after_runs``: after that many RunInstances, hold every further request until
      :meth:`release`; held requests are then answered 503 (lost), never forwarded.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail_types: dict[str, tuple[int, str]] = {}
        self.fail_runs: dict[int, tuple[int, str]] = {}
        self.hold_after_runs: int | None = None
        self.runs = 0
        self.run_types: list[str] = []
        self.holding = asyncio.Event()
        self._released = asyncio.Event()
        self._session: ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._session = ClientSession()

    async def stop(self) -> None:
        self._released.set()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def release(self) -> None:
        self._released.set()

    @staticmethod
    def _error(status: int, code: str) -> web.Response:
        body = _ERROR_XML.format(code=code, message=f"injected {code}")
        return web.Response(status=status, body=body.encode(), content_type="text/xml")

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        action = form.get("Action", [""])[0]
        if self.hold_after_runs is not None and self.runs >= self.hold_after_runs:
            self.holding.set()
            await self._released.wait()
            return self._error(503, "ServiceUnavailable")
        if action == "RunInstances":
            self.runs += 1
            itype = form.get("InstanceType", [""])[0]
            self.run_types.append(itype)
            fault = self.fail_runs.get(self.runs) or self.fail_types.get(itype)
            if fault:
                return self._error(*fault)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as up:
            data = await up.read()
            return web.Response(status=up.status, body=data, content_type=up.content_type)


@pytest.fixture
async def proxy(ec2_endpoint: str) -> AsyncIterator[FaultProxy]:
    p = FaultProxy(ec2_endpoint)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.mark.usefixtures("dedicated_path")
async def test_legacy_job_gets_two_tagged_instances_and_cancel_terminates_them(
    nc: Client, events, ec2_endpoint: str
) -> None:  # type: ignore[no-untyped-def]
    provisioning = await events(s.CLUSTER_PROVISIONING)
    provisioned = await events(s.CLUSTER_PROVISIONED)
    torn_down = await events(s.CLUSTER_TORN_DOWN)
    released = await events(s.PLACEMENT_RELEASED)
    job_id = await submit(nc)

    done = await provisioned.wait(job_id, timeout=30)
    assert (await provisioning.wait(job_id))["instances"]
    got = sorted(done["instances"], key=lambda i: i["replica"])
    assert [(i["replica"], i["state"], i["instance_type"]) for i in got] == [
        (0, "running", "t3.medium"),
        (1, "running", "t3.medium"),
    ]
    assert all(i["private_ip"] for i in got)
    ids = sorted(i["instance_id"] for i in got)
    live = await instances(ec2_endpoint, job_id, ["running"])
    assert sorted(i["InstanceId"] for i in live) == ids
    assert sorted(i["tags"][f"{TAG}:replica"] for i in live) == ["0", "1"]
    assert {i["tags"][f"{TAG}:project"] for i in live} == {PROJECT}

    assert await request(nc, s.JOB_CANCEL, {"job_id": job_id}) == (200, {"job_id": job_id, "state": "cancelling"})
    td = await torn_down.wait(job_id, timeout=20)
    assert sorted(td["instance_ids"]) == ids and td["reason"] == "cancelled"
    assert (await released.wait(job_id))["reason"] == "cancelled"
    assert await instances(ec2_endpoint, job_id, LIVE) == []
    # idempotent, and the job is released exactly once
    assert await request(nc, s.JOB_CANCEL, {"job_id": job_id}) == (200, {"job_id": job_id, "state": "cancelled"})
    code, body = await request(nc, s.JOB_COMPLETE, {"job_id": job_id, "outcome": "succeeded"})
    assert code == 409 and body["error"]["code"] == 409
    assert len(released.by_job[job_id]) == 1 and len(torn_down.by_job[job_id]) == 1


async def test_insufficient_capacity_falls_back_to_the_next_ranked_type(
    nc: Client, services: Spawn, events, proxy: FaultProxy, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    proxy.fail_types["t3.medium"] = (500, "InsufficientInstanceCapacity")
    await services("gateway", "intake", "placement", "provisioner", env=aws_env(proxy.url, write_config(tmp_path)))
    provisioned = await events(s.CLUSTER_PROVISIONED)
    job_id = await submit(nc)
    done = await provisioned.wait(job_id, timeout=30)
    assert {i["instance_type"] for i in done["instances"]} == {"m5.large"}
    assert len(done["instances"]) == 2
    assert "t3.medium" in proxy.run_types  # it was tried first
    live = await instances(proxy.upstream, job_id, LIVE)
    assert sorted(i["InstanceType"] for i in live) == ["m5.large", "m5.large"]


async def test_permanent_error_fails_the_job_and_leaves_nothing_running(
    nc: Client, services: Spawn, events, proxy: FaultProxy, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    proxy.fail_runs[2] = (400, "Unsupported")  # replica 0 launches, replica 1 is refused
    await services(*DEDICATED_PATH, env=aws_env(proxy.url, write_config(tmp_path)))
    failed = await events(s.CLUSTER_PROVISION_FAILED)
    torn_down = await events(s.CLUSTER_TORN_DOWN)
    released = await events(s.PLACEMENT_RELEASED)
    job_id = await submit(nc)
    f = await failed.wait(job_id, timeout=30)
    assert f["error_code"] == "Unsupported"
    td = await torn_down.wait(job_id, timeout=20)
    assert len(td["instance_ids"]) == 1
    assert (await released.wait(job_id))["reason"] == "failed"
    assert len(await instances(proxy.upstream, job_id)) == 1  # it did launch one...
    assert await instances(proxy.upstream, job_id, LIVE) == []  # ...and it is gone
    code, _ = await request(nc, s.JOB_CANCEL, {"job_id": job_id})
    assert code == 409


async def test_provisioner_killed_mid_launch_resumes_without_a_second_cluster(
    nc: Client, services: Spawn, events, proxy: FaultProxy, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = aws_env(proxy.url, write_config(tmp_path))
    await services("gateway", "intake", "placement", env=env)
    (prov,) = await services("provisioner", env=env)
    provisioned = await events(s.CLUSTER_PROVISIONED)
    proxy.hold_after_runs = 1  # freeze it right after the first RunInstances
    job_id = await submit(nc)
    await asyncio.wait_for(proxy.holding.wait(), 30)
    prov.kill()  # SIGKILL between RunInstances and cluster.provisioned
    first = await instances(proxy.upstream, job_id)
    assert len(first) == 1
    proxy.hold_after_runs = None
    proxy.release()

    await services("provisioner", env=env)
    done = await provisioned.wait(job_id, timeout=30)
    ids = sorted(i["instance_id"] for i in done["instances"])
    assert first[0]["InstanceId"] in ids and len(ids) == 2
    every = await instances(proxy.upstream, job_id)  # in any state: nothing else was ever launched
    assert sorted(i["InstanceId"] for i in every) == ids
    assert sorted(i["tags"][f"{TAG}:replica"] for i in every) == ["0", "1"]
