"""The ``console`` user of nats.conf, over the websocket listener the page uses: it may ask the query
endpoints and ``$SRV.*`` and watch the events, nothing else (no submit, cancel, drain, event, request
subject or JetStream), and a websocket client without credentials gets exactly the same. Every subject the
page is told to use (config.json) is one the console user may use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client

from schemas import subjects as s
from services.console.config import page_config
from services.devstack import NatsServer
from services.runtime.config import Timeouts
from services.runtime.credentials import password
from tests.support.permissions import EVENTS, REQUESTS, WATCHED, Violations, concrete

pytestmark = pytest.mark.integration

COMMITS = {concrete(subject) for subject in s.PLACEMENTS.capture}
JETSTREAM = {
    "$JS.API.INFO",
    "$JS.API.STREAM.LIST",
    f"$JS.API.STREAM.INFO.{s.JOBS.name}",
    f"$JS.API.STREAM.DELETE.{s.JOBS.name}",
    f"$JS.API.CONSUMER.DELETE.{s.JOBS.name}.{s.INTAKE_JOBS.durable}",
    f"$JS.API.CONSUMER.MSG.NEXT.{s.JOBS.name}.{s.INTAKE_JOBS.durable}",
}
EVERYTHING = REQUESTS | EVENTS | COMMITS | JETSTREAM | {"$SRV.PING", "$SRV.STATS"}

QUERIES = {s.JOB_GET, s.JOB_LIST, s.JOB_EVENTS, s.NODE_LIST}


Connect = Callable[..., Awaitable[tuple[Client, Violations]]]


@pytest.fixture
async def over_websocket(nats_server: NatsServer) -> AsyncIterator[Connect]:
    clients: list[Client] = []

    async def connect(**auth: str) -> tuple[Client, Violations]:
        v = Violations()
        client = await nats.connect(nats_server.websocket_url, error_cb=v.cb, allow_reconnect=False, **auth)
        clients.append(client)
        return client, v

    yield connect
    for client in clients:
        await client.close()


async def may_publish(client: Client, v: Violations) -> set[str]:
    allowed = set()
    for subject in sorted(EVERYTHING):
        await client.publish(subject, b"{}")
        if not await v.settle(client):
            allowed.add(subject)
    return allowed


async def may_subscribe(client: Client, v: Violations) -> set[str]:
    allowed = set()
    inboxes = {f"{s.DEFAULT_INBOX_PREFIX}.>", f"{s.CONSOLE_INBOX_PREFIX}.>", f"{s.SERVICES_INBOX_PREFIX}.>"}
    for subject in sorted(EVERYTHING | {">", "job.>", "placement.>"} | inboxes):
        sub = await client.subscribe(subject)
        if not await v.settle(client):
            allowed.add(subject)
        await sub.unsubscribe()
    return allowed


@pytest.mark.parametrize("auth", ["console", "no credentials"])
async def test_the_console_user_asks_queries_and_watches_events_and_nothing_else(
    over_websocket: Connect, auth: str
) -> None:
    client, v = await over_websocket(
        **({"user": "console", "password": password("console")} if auth == "console" else {})
    )
    assert await may_publish(client, v) == QUERIES | {"$SRV.PING", "$SRV.STATS"}
    assert await may_subscribe(client, v) == WATCHED | {f"{s.CONSOLE_INBOX_PREFIX}.>"}


async def test_the_console_cannot_submit_cancel_drain_or_forge_an_event(over_websocket: Connect) -> None:
    client, v = await over_websocket(user="console", password=password("console"))
    for subject in (s.JOB_SUBMIT, s.JOB_CANCEL, s.NODE_DRAIN, s.JOB_SCALE, s.PLACEMENT_DECIDED, s.JOB_SUBMITTED):
        await client.publish(subject, b"{}")
        (violation,) = await v.settle(client)
        assert f'publish to "{subject}"' in violation


async def test_every_subject_the_page_is_given_is_one_the_console_user_may_use(over_websocket: Connect) -> None:
    client, v = await over_websocket(user="console", password=password("console"))
    names = page_config(("ws://unused",), "console", "unused", Timeouts()).subjects
    for subject in (names.job_get, names.job_list, names.job_events, names.node_list, names.srv_stats):
        await client.publish(subject, b"{}")
    for subject in (names.node_status, names.node_draining, names.placement_decided, *names.feed, *names.job_changes):
        await client.subscribe(subject)
    assert await v.settle(client) == []
