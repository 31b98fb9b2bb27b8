"""Tenants' jobs through the real services (§8.4): each tenant sees and touches only its own.

Clients connect as the users of the tenant accounts ACME and GLOBEX of nats.conf and send the
ordinary requests (``job.submit``, ``job.get``...), which their imports carry to the services on
``sched.tenant.*``; the operator is the ``manager`` of the scheduler's own account. Another
tenant's job answers exactly as an unknown job does (404, the same message), whichever
service answers (metadata: get, events; the gateway: cancel, complete, scale).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client

from schemas import subjects as s
from services.devstack import NatsServer
from services.gateway.handlers import job_id_for
from services.runtime.credentials import Role
from tests.support.api import request, start_metadata
from tests.support.events import publish_nodes
from tests.support.servers import Spawn, nats_auth
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

Connect = Callable[[Role], Awaitable[Client]]
KEY = "order-42"
"""The one idempotency key every caller sends: each still gets a job of its own."""
UNKNOWN = "0" * 32


@pytest.fixture
async def connect(nats_server: NatsServer) -> AsyncIterator[Connect]:
    clients: list[Client] = []

    async def open_client(role: Role) -> Client:
        client = await nats.connect(nats_server.url, allow_reconnect=False, **nats_auth(role))
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


@pytest.fixture
async def running(nc: Client, services: Spawn, database_url: str) -> None:
    """The path of a job and its queries: gateway, intake, placement (on five nodes), metadata."""
    await start_metadata(nc, services, database_url)
    await services("gateway", "intake", "placement")
    await publish_nodes(nc)


async def submit(client: Client, name: str) -> str:
    code, body = await request(client, s.JOB_SUBMIT, {"name": name, "request_id": KEY})
    assert code == 200, body
    job_id: str = body["job_id"]
    return job_id


async def projected(client: Client, job_id: str) -> None:
    """Wait until metadata has the job (asked by its owner or an operator)."""

    async def known() -> bool:
        return (await request(client, s.JOB_GET, {"job_id": job_id}))[0] == 200

    await eventually(known, what=f"job {job_id} in metadata")


def requests(job_id: str) -> dict[str, dict[str, Any]]:
    """A request about ``job_id`` on each subject that names one."""
    return {
        s.JOB_GET: {"job_id": job_id},
        s.JOB_EVENTS: {"job_id": job_id},
        s.JOB_CANCEL: {"job_id": job_id},
        s.JOB_COMPLETE: {"job_id": job_id, "outcome": "failed"},
        s.JOB_SCALE: {"job_id": job_id, "replicas": 3},
    }


async def refusals(client: Client, job_id: str) -> dict[str, tuple[int, dict[str, Any]]]:
    """Each request's answer about ``job_id``, the job id in the error replaced by ``X``."""
    out = {}
    for subject, body in requests(job_id).items():
        code, reply = await request(client, subject, body)
        out[subject] = (code, json.loads(json.dumps(reply).replace(job_id, "X")))
    return out


async def listed(client: Client, **body: Any) -> list[str]:
    code, reply = await request(client, s.JOB_LIST, body)
    assert code == 200, reply
    return [j["job_id"] for j in reply["jobs"]]


async def stored(nc: Client, subject: str) -> bool:
    try:
        await nc.jetstream().get_last_msg(s.JOBS.name, subject)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def test_each_tenant_sees_and_touches_only_its_own_jobs(nc: Client, running: None, connect: Connect) -> None:
    acme, globex, manager = await connect("acme"), await connect("globex"), await connect("manager")
    jobs = {"acme": await submit(acme, "a"), "globex": await submit(globex, "g"), "default": await submit(manager, "o")}
    assert len(set(jobs.values())) == 3  # the same key, a job each
    assert jobs["default"] == job_id_for(KEY)  # the scheduler account's ids are as before tenants
    assert await submit(acme, "a") == jobs["acme"]  # and a retry is still the same job
    for tenant, client in (("acme", acme), ("globex", globex), ("default", manager)):
        await projected(client, jobs[tenant])
        code, record = await request(client, s.JOB_GET, {"job_id": jobs[tenant]})
        assert record["tenant"] == tenant

    unknown = await refusals(acme, UNKNOWN)
    assert {code for code, _ in unknown.values()} == {404}
    for client, others in ((acme, ("globex", "default")), (globex, ("acme", "default"))):
        for other in others:
            assert await refusals(client, jobs[other]) == unknown, f"{other}'s job seen by another tenant"
    for subject in (s.JOB_CANCEL_REQUESTED, s.JOB_COMPLETED, s.JOB_SCALE_REQUESTED):
        assert not await stored(nc, subject), f"a 404'd request stored {subject}"

    assert await listed(acme) == [jobs["acme"]]
    assert await listed(acme, tenant="globex") == [jobs["acme"]]  # its own, whatever it asks
    assert await listed(globex, tenant="default", limit=10) == [jobs["globex"]]
    assert set(await listed(manager)) == set(jobs.values())  # operators see every tenant's
    for tenant, job_id in jobs.items():
        assert await listed(manager, tenant=tenant) == [job_id]
        code, record = await request(manager, s.JOB_GET, {"job_id": job_id})
        assert (code, record["tenant"]) == (200, tenant)

    # and act on them: a tenant on its own job, an operator on any tenant's
    assert await request(acme, s.JOB_CANCEL, {"job_id": jobs["acme"]}) == (
        200,
        {"job_id": jobs["acme"], "state": "cancelling"},
    )
    assert (await request(manager, s.JOB_CANCEL, {"job_id": jobs["globex"]}))[1]["state"] == "cancelling"
    code, events = await request(acme, s.JOB_EVENTS, {"job_id": jobs["acme"]})
    assert code == 200 and events["events"][0]["tenant"] == "acme"


async def test_a_tenant_lists_its_own_jobs_page_by_page(nc: Client, running: None, connect: Connect) -> None:
    acme, globex, manager = await connect("acme"), await connect("globex"), await connect("manager")
    mine = [(await request(acme, s.JOB_SUBMIT, {"name": f"a{i}"}))[1]["job_id"] for i in range(5)]
    theirs = [(await request(globex, s.JOB_SUBMIT, {"name": f"g{i}"}))[1]["job_id"] for i in range(5)]
    for job_id in mine + theirs:
        await projected(manager, job_id)
    seen: list[str] = []
    after: str | None = None
    while True:
        body: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        code, page = await request(acme, s.JOB_LIST, body)
        assert code == 200 and len(page["jobs"]) <= 2
        seen += [j["job_id"] for j in page["jobs"]]
        if not (after := page["next"]):
            break
    assert seen == mine[::-1]  # newest first, none of globex's
    assert set(await listed(manager, tenant="globex")) == set(theirs)
