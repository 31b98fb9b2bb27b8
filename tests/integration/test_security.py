"""Users and permissions of the repo's nats.conf, checked on a real nats-server.

A denied publish or subscribe is dropped by the server, which sends the client an
asynchronous ``-ERR 'Permissions Violation ...'``. The server answers a connection's
protocol in order, so after an operation the test publishes to a sentinel subject no
role may publish to, and waits for the sentinel's own violation: every violation the
operation caused has arrived before it. "Allowed" is decided without a timeout.
(``flush()`` would not do: nats-py writes its PING ahead of commands still buffered.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from services.devstack import NatsServer
from services.gateway.handlers import job_id_for
from services.runtime.credentials import Role
from tests.support.events import decided
from tests.support.permissions import EVENTS, REQUESTS, SENTINEL, WATCHED, concrete
from tests.support.servers import Spawn, nats_auth

pytestmark = pytest.mark.integration

NODE_STATUS = concrete(s.NODE_STATUS_ALL)

# JetStream API and discovery subjects (published without a reply, so nothing happens when allowed)
JS_READ = {"$JS.API.INFO", "$JS.API.STREAM.LIST", f"$JS.API.STREAM.INFO.{s.JOBS.name}", "$SRV.PING"}
JS_WRITE = {
    f"$JS.API.STREAM.DELETE.{s.JOBS.name}",
    f"$JS.API.STREAM.PURGE.{s.JOBS.name}",
    f"$JS.API.STREAM.UPDATE.{s.JOBS.name}",
    f"$JS.API.CONSUMER.DELETE.{s.JOBS.name}.{s.INTAKE_JOBS.durable}",
}
TENANT_REQUESTS = {s.tenant_request_subject(subject) for subject in s.TENANT_REQUESTS}
"""Where the services serve tenants (§8.4): only an import reaches them. No user of the scheduler's
account may publish there (it could forge the tenant's Nats-Request-Info); ``services`` serve them."""
EVERYTHING = REQUESTS | EVENTS | JS_READ | JS_WRITE | TENANT_REQUESTS

# what each role may publish / subscribe to, among EVERYTHING
PUBLISH: dict[Role, set[str]] = {
    "services": REQUESTS | EVENTS | JS_READ | (JS_WRITE - {f"$JS.API.STREAM.DELETE.{s.JOBS.name}"}),
    "manager": (REQUESTS - {s.QUOTA_SET}) | JS_READ,
    "node": {NODE_STATUS},
    "monitor": JS_READ,
}
SUBSCRIBE: dict[Role, set[str]] = {
    "services": REQUESTS | EVENTS | {"$SRV.PING"} | TENANT_REQUESTS,
    "manager": WATCHED,
    "node": set(),
    "monitor": set(),
}


class Violations:
    """Collects the server's permission violations reported to a client."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    async def cb(self, e: Exception) -> None:
        self.queue.put_nowait(str(e))

    async def next(self, timeout: float = 10.0) -> str:
        return await asyncio.wait_for(self.queue.get(), timeout)


Connect = Callable[[Role], Awaitable[tuple[Client, Violations]]]


@pytest.fixture
async def connect_as(nats_server: NatsServer) -> AsyncIterator[Connect]:
    clients: list[Client] = []

    async def connect(role: Role) -> tuple[Client, Violations]:
        v = Violations()
        client = await nats.connect(nats_server.url, error_cb=v.cb, allow_reconnect=False, **nats_auth(role))
        clients.append(client)
        return client, v

    yield connect
    for client in clients:
        await client.close()


def denial(subject: str) -> str:
    """How nats-py reports (lower-cased) the server's violation for ``subject``."""
    return f'"{subject.lower()}"'


async def settle(client: Client, v: Violations) -> list[str]:
    """The violations caused by what this client sent so far (see the module docstring)."""
    await client.publish(SENTINEL, b"")
    seen = []
    while denial(SENTINEL) not in (e := await v.next()):
        assert "permissions violation" in e, e
        seen.append(e)
    return seen


async def allowed_publish(client: Client, v: Violations, subject: str) -> bool:
    await client.publish(subject, b"{}")
    return not await settle(client, v)


async def allowed_subscribe(client: Client, v: Violations, subject: str) -> bool:
    sub = await client.subscribe(subject)
    seen = await settle(client, v)
    await sub.unsubscribe()
    return not seen


@pytest.mark.parametrize("role", list(PUBLISH))
async def test_each_role_publishes_exactly_its_subjects(connect_as: Connect, role: Role) -> None:
    """Every subject of schemas/subjects.py against the role's publish permissions: they cannot drift."""
    client, v = await connect_as(role)
    allowed = {subject for subject in sorted(EVERYTHING) if await allowed_publish(client, v, subject)}
    assert allowed == PUBLISH[role]


@pytest.mark.parametrize("role", list(SUBSCRIBE))
async def test_each_role_subscribes_exactly_to_its_subjects(connect_as: Connect, role: Role) -> None:
    client, v = await connect_as(role)
    allowed = {subject for subject in sorted(EVERYTHING) if await allowed_subscribe(client, v, subject)}
    assert allowed == SUBSCRIBE[role]


async def stored(nc: Client, stream: s.StreamSpec) -> int:
    info = await nc.jetstream().stream_info(stream.name)
    return int(info.state.messages)


async def test_node_cannot_submit_nor_decide_but_reports_status(
    nc: Client, services: Spawn, connect_as: Connect
) -> None:
    await services("gateway")  # would store job.submitted if the node's request got through
    node, v = await connect_as("node")
    await node.publish(s.JOB_SUBMIT, b'{"name": "sneaky"}', reply="_INBOX.nowhere")  # a submit, answer or not
    assert denial(s.JOB_SUBMIT) in await v.next()
    forged = decided("forged", event_id="forged")
    await node.publish(s.PLACEMENT_DECIDED, ev.encode(forged))
    assert denial(s.PLACEMENT_DECIDED) in await v.next()
    status = ev.NodeStatus(
        node_id="n1", state="active", technologies=["docker"], cpu_cores=4, cpu_free=4, memory_mb=1, memory_free_mb=1
    )
    await node.publish(ev.subject_of(status), ev.encode(status))
    assert await settle(node, v) == []
    assert await stored(nc, s.JOBS) == 0
    assert await stored(nc, s.PLACEMENTS) == 0
    await _eventually(lambda: stored(nc, s.NODES), 1)


async def _eventually(read: Callable[[], Awaitable[int]], expected: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (value := await read()) != expected:
        assert loop.time() < deadline, f"still {value}, expected {expected}"
        await asyncio.sleep(0.05)


async def test_manager_submits_and_reads_but_cannot_delete_a_stream_or_forge_events(
    nc: Client, services: Spawn, connect_as: Connect
) -> None:
    await services("gateway")
    manager, v = await connect_as("manager")
    decided = await manager.subscribe(s.PLACEMENT_DECIDED)
    reply = await manager.request(s.JOB_SUBMIT, b'{"name": "demo"}', timeout=5)
    assert json.loads(reply.data)["state"] == "submitted"
    js = manager.jetstream(timeout=10)
    assert (await js.stream_info(s.JOBS.name)).config.name == s.JOBS.name
    # the delete request is dropped by the server: the violation arrives, the request gets no answer
    delete = asyncio.create_task(js.delete_stream(s.JOBS.name))
    assert denial(f"$JS.API.STREAM.DELETE.{s.JOBS.name}") in await v.next()
    delete.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await delete
    await manager.publish(s.JOB_ACCEPTED, b'{"job_id": "forged"}')
    assert denial(s.JOB_ACCEPTED) in await v.next()
    assert await settle(manager, v) == []
    assert await stored(nc, s.JOBS) == 1  # the submitted job, nothing forged, stream still there
    await decided.unsubscribe()


async def test_monitor_sees_services_and_streams_but_cannot_publish(
    services: Spawn, connect_as: Connect, nats_server: NatsServer
) -> None:
    await services("gateway")
    monitor, v = await connect_as("monitor")
    ping = json.loads((await monitor.request("$SRV.PING.gateway", b"", timeout=5)).data)
    assert ping["name"] == "gateway"
    names = await monitor.jetstream().streams_info()
    assert {i.config.name for i in names} >= {spec.name for spec in s.STREAMS}
    await monitor.publish(s.JOB_SUBMIT, b"{}")
    assert denial(s.JOB_SUBMIT) in await v.next()
    await monitor.publish(NODE_STATUS, b"{}")
    assert denial(NODE_STATUS) in await v.next()


@pytest.mark.parametrize(
    "auth",
    [{"user": "manager", "password": "wrong"}, {"user": "nobody", "password": "dev-manager"}],
    ids=["wrong-password", "unknown-user"],
)
async def test_unauthenticated_connections_are_refused(nats_server: NatsServer, auth: dict[str, str]) -> None:
    async def quiet(e: Exception) -> None:
        pass

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_server.url, allow_reconnect=False, error_cb=quiet, **auth)


async def test_anonymous_clients_get_the_manager_role_only(services: Spawn, nats_server: NatsServer) -> None:
    """``no_auth_user: manager``: the stock ``nats req job.submit`` works without a context,
    with the manager's least privilege (no forged events, no stream deletion)."""
    await services("gateway")
    errors: list[str] = []
    both_denied = asyncio.Event()

    async def record(e: Exception) -> None:
        errors.append(str(e))
        if any(s.PLACEMENT_DECIDED in x for x in errors) and any(NODE_STATUS in x for x in errors):
            both_denied.set()

    anon = await nats.connect(nats_server.url, allow_reconnect=False, error_cb=record)
    try:
        reply = await anon.request(s.JOB_SUBMIT, b'{"name": "anonymous"}', timeout=5)
        assert json.loads(reply.data)["state"] == "submitted"
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error)):  # denied: no answer
            await anon.jetstream(timeout=2).delete_stream(s.JOBS.name)
        await anon.publish(s.PLACEMENT_DECIDED, b"{}")
        await anon.publish(NODE_STATUS, b"{}")
        await asyncio.wait_for(both_denied.wait(), 5)  # the server's permission violations
    finally:
        await anon.close()


# --- tenants (§8.4): whose request it is comes from the server, never from the client ------------
# The isolation of tenants' jobs from one another: tests/integration/test_tenants.py.


async def last_submitted(nc: Client) -> dict[str, Any]:
    """The last ``job.submitted`` stored (the tests submit one job at a time)."""
    msg = await nc.jetstream().get_last_msg(s.JOBS.name, s.JOB_SUBMITTED)
    body: dict[str, Any] = json.loads(msg.data or b"{}")
    return body


async def test_a_forged_request_info_header_changes_no_jobs_tenant(
    nc: Client, services: Spawn, connect_as: Connect
) -> None:
    await services("gateway")
    manager, _ = await connect_as("manager")
    acme, _ = await connect_as("acme")
    body = b'{"name": "forged", "request_id": "k1"}'
    # inside the scheduler's account the header is the client's own: never read, the job is default's
    claims_acme = {s.REQUEST_INFO_HEADER: json.dumps({"acc": "ACME"})}
    reply = await manager.request(s.JOB_SUBMIT, body, headers=claims_acme, timeout=5)
    assert json.loads(reply.data)["job_id"] == job_id_for("k1")
    stored_job = await last_submitted(nc)
    assert (stored_job["job_id"], stored_job.get("tenant", s.DEFAULT_TENANT)) == (job_id_for("k1"), s.DEFAULT_TENANT)
    # across accounts the server stamps the header itself: ACME's claim to be GLOBEX is overwritten
    claims_globex = {s.REQUEST_INFO_HEADER: json.dumps({"acc": "GLOBEX"})}
    reply = await acme.request(s.JOB_SUBMIT, body, headers=claims_globex, timeout=5)
    assert json.loads(reply.data)["job_id"] == job_id_for("k1", "acme")
    stored_job = await last_submitted(nc)
    assert (stored_job["job_id"], stored_job["tenant"]) == (job_id_for("k1", "acme"), "acme")


async def test_no_user_of_the_scheduler_account_reaches_the_tenants_subjects(
    nc: Client, services: Spawn, connect_as: Connect
) -> None:
    """``sched.tenant.*`` trusts Nats-Request-Info: a manager publishing there could forge any tenant
    (every role: ``test_each_role_publishes_exactly_its_subjects``)."""
    await services("gateway")
    manager, v = await connect_as("manager")
    forged = {s.REQUEST_INFO_HEADER: json.dumps({"acc": "ACME"})}
    subject = s.tenant_request_subject(s.JOB_SUBMIT)
    await manager.publish(subject, b'{"name": "forged"}', reply="_INBOX.nowhere", headers=forged)
    assert denial(subject) in await v.next()
    assert await settle(manager, v) == []
    assert await stored(nc, s.JOBS) == 0


async def test_quota_set_is_the_operators_alone(nc: Client, services: Spawn, connect_as: Connect) -> None:
    await services("placement")
    body = json.dumps({"tenant": "acme", "quota": {"cpu": 64}}).encode()
    # served (admin, the operators' full access, sets it)...
    reply = await nc.request(s.QUOTA_SET, body, timeout=5)
    assert json.loads(reply.data)["tenant"] == "acme"
    # ...but a tenant's account does not import it: nobody answers there
    acme, _ = await connect_as("acme")
    with pytest.raises(nats.errors.NoRespondersError):
        await acme.request(s.QUOTA_SET, body, timeout=5)
    # and the Cluster Manager may not send it
    manager, v = await connect_as("manager")
    await manager.publish(s.QUOTA_SET, body, reply="_INBOX.nowhere")
    assert denial(s.QUOTA_SET) in await v.next()
