"""Each tenant's placement events in its own account (§8.4, §8.6), through the gateway's relay.

Placement events are committed here as the ``services`` role (as placement commits them, on
``sched.commit.placement.*``) with a ``tenant``; the relay copies them into TENANT_PLACEMENTS,
which the tenant accounts ACME and GLOBEX import as ``placement.*`` and read at least once
through their durables ``cluster-manager-<tenant>`` under the JetStream API prefix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import events as ev
from schemas import subjects as s
from services.devstack import NatsServer
from services.gateway.relay import SERVICE
from services.runtime.credentials import Role
from services.runtime.publisher import Publisher
from services.runtime.streams import consumer_config
from tests.support.config import aws_env, write_config
from tests.support.events import SMALL_SPEC, Events, decided
from tests.support.events import publish as publish_copies
from tests.support.servers import Spawn, nats_auth

EVENT_SUBJECTS = (s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.PLACEMENT_DEGRADED, s.PLACEMENT_RELEASED)
ACME_DURABLE = s.tenant_cluster_manager("acme")

Connect = Callable[[Role], Awaitable[Client]]


@pytest.fixture
async def connect(nats_server: NatsServer) -> AsyncIterator[Connect]:
    """Clients of nats.conf's roles (``acme``, ``globex``, ``services``...), closed afterwards."""
    clients: list[Client] = []

    async def open_client(role: Role) -> Client:
        client = await nats.connect(nats_server.url, **nats_auth(role))
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        if not client.is_closed:
            await client.close()


@pytest.fixture
async def gateway(services: Spawn) -> None:
    await services("gateway")


def job_events(tenant: str, tag: str) -> list[ev.Event]:
    """One event of each placement subject, each of its own job ``<tag>-<tenant>-<subject>``."""

    def job(subject: str) -> str:
        return f"{tag}-{tenant}-{subject.rsplit('.', 1)[-1]}"

    def eid(subject: str) -> str:
        return ev.event_id_for(job(subject), subject)

    return [
        decided(job(s.PLACEMENT_DECIDED), tenant=tenant),
        ev.PlacementFailed(
            event_id=eid(s.PLACEMENT_FAILED), job_id=job(s.PLACEMENT_FAILED), reason="no node fits", tenant=tenant
        ),
        ev.PlacementDegraded(
            event_id=eid(s.PLACEMENT_DEGRADED),
            job_id=job(s.PLACEMENT_DEGRADED),
            revision=2,
            missing=[1],
            reason="node lost",
            tenant=tenant,
        ),
        ev.PlacementReleased(
            event_id=eid(s.PLACEMENT_RELEASED), job_id=job(s.PLACEMENT_RELEASED), reason="cancelled", tenant=tenant
        ),
    ]


def job_ids(events: Sequence[ev.Event]) -> set[str]:
    return {e.job_id for e in events if isinstance(e, ev.JobEvent)}


async def commit(services_nc: Client, events: Sequence[ev.Event]) -> None:
    """Store ``events`` in PLACEMENTS the way placement commits them (``Nats-Msg-Id`` = event id)."""
    await Publisher(services_nc.jetstream()).publish_many(events)


async def collect(client: Client, subjects: Sequence[str]) -> Events:
    """A core subscription of ``client`` on each of ``subjects``, collecting by job id."""
    seen = Events()
    for subject in subjects:
        await client.subscribe(subject, cb=seen.cb)
    await client.flush()
    return seen


def counts(seen: Events) -> dict[str, int]:
    return {job: len(got) for job, got in seen.by_job.items()}


async def fetch_until(psub: JetStreamContext.PullSubscription, count: int, timeout: float = 20.0) -> list[Msg]:
    """Pull from ``psub`` until ``count`` messages arrived (the server answers each pull as soon as it has some)."""
    got: list[Msg] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < count:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError(f"{len(got)} of {count} messages within {timeout} s")
        try:
            got += await psub.fetch(count - len(got), timeout=min(left, 2.0))
        except nats.errors.TimeoutError:
            continue
    return got


def job_of(msg: Msg) -> str:
    return str(msgspec.json.decode(msg.data)["job_id"])


@pytest.mark.usefixtures("gateway")
async def test_a_tenant_subscriber_gets_exactly_its_own_jobs_placement_events_once(connect: Connect) -> None:
    services_nc, acme, globex = await connect("services"), await connect("acme"), await connect("globex")
    acme_seen = await collect(acme, EVENT_SUBJECTS)
    globex_seen = await collect(globex, ["placement.*"])
    mine, theirs, ours = job_events("acme", "a"), job_events("globex", "a"), job_events(s.DEFAULT_TENANT, "a")
    await commit(services_nc, [e for trio in zip(mine, theirs, ours, strict=True) for e in trio])
    for job in job_ids(mine):
        await acme_seen.wait(job)
    for job in job_ids(theirs):
        await globex_seen.wait(job)

    # Markers, committed once everything above was relayed: a copy that leaked would have
    # been stored (and re-published) before them.
    acme_marker, globex_marker = decided("marker-acme", tenant="acme"), decided("marker-globex", tenant="globex")
    await commit(services_nc, [acme_marker, globex_marker])
    await acme_seen.wait("marker-acme")
    await globex_seen.wait("marker-globex")

    assert counts(acme_seen) == dict.fromkeys(job_ids(mine) | {"marker-acme"}, 1)
    assert counts(globex_seen) == dict.fromkeys(job_ids(theirs) | {"marker-globex"}, 1)
    by_type = {got[0]["type"] for job, got in acme_seen.by_job.items() if job != "marker-acme"}
    assert by_type == set(EVENT_SUBJECTS)
    assert all(got[0]["tenant"] == "acme" for got in acme_seen.by_job.values())


@pytest.mark.usefixtures("gateway")
async def test_the_default_tenants_events_are_not_copied(connect: Connect) -> None:
    services_nc, acme = await connect("services"), await connect("acme")
    acme_seen = await collect(acme, ["placement.*"])
    await commit(services_nc, [*job_events(s.DEFAULT_TENANT, "d"), decided("marker-acme", tenant="acme")])
    await acme_seen.wait("marker-acme")

    info = await services_nc.jetstream().stream_info(s.TENANT_PLACEMENTS.name, subjects_filter=">")
    assert info.state.subjects == {s.tenant_event_subject("acme", s.PLACEMENT_DECIDED): 1}
    assert counts(acme_seen) == {"marker-acme": 1}


@pytest.mark.usefixtures("gateway")
async def test_a_tenant_reads_its_durable_at_least_once_and_another_tenant_cannot(connect: Connect, nc: Client) -> None:
    services_nc, acme = await connect("services"), await connect("acme")
    acme_seen = await collect(acme, ["placement.*"])
    first = [decided(f"first-{i}", tenant="acme") for i in range(6)]
    await commit(services_nc, first)
    for job in job_ids(first):  # relayed, so the durable exists (declared before the first copy)
        await acme_seen.wait(job)

    js = acme.jetstream(prefix=s.TENANT_JS_API_PREFIX)
    info = await js.consumer_info(s.TENANT_PLACEMENTS.name, ACME_DURABLE.durable)
    assert info.config.filter_subject == s.tenant_event_subject("acme", "placement.*")
    # The operators shorten the durable's ack wait (30 s) so that this test need not wait that
    # long for the redelivery of what the closed client left unacked.
    short = consumer_config(msgspec.structs.replace(ACME_DURABLE, ack_wait_s=1.0))
    await nc.jetstream().add_consumer(s.TENANT_PLACEMENTS.name, short)  # create or update
    psub = await js.pull_subscribe_bind(durable=ACME_DURABLE.durable, stream=s.TENANT_PLACEMENTS.name)
    delivered = await fetch_until(psub, len(first))
    assert sorted(job_of(m) for m in delivered) == sorted(job_ids(first))
    acked = delivered[::2]
    for m in acked:
        await m.ack_sync()  # confirmed by the server through the imported ack subject
    await acme.close()  # the rest stays unacked, as after a Cluster Manager's crash

    later = [decided(f"later-{i}", tenant="acme") for i in range(3)]
    await commit(services_nc, later)

    acme = await connect("acme")
    psub = await acme.jetstream(prefix=s.TENANT_JS_API_PREFIX).pull_subscribe_bind(
        durable=ACME_DURABLE.durable, stream=s.TENANT_PLACEMENTS.name
    )
    unacked = job_ids(first) - {job_of(m) for m in acked}
    again = await fetch_until(psub, len(unacked) + len(later))
    assert sorted(job_of(m) for m in again) == sorted(unacked | job_ids(later))
    for m in again:
        await m.ack_sync()

    # GLOBEX has no import of ACME's durable: its pull and info requests reach no one.
    globex = await connect("globex")
    pull = f"{s.TENANT_JS_API_PREFIX}.CONSUMER.MSG.NEXT.{s.TENANT_PLACEMENTS.name}.{ACME_DURABLE.durable}"
    with pytest.raises(nats.errors.NoRespondersError):
        await globex.request(pull, b'{"batch":1}', timeout=5)
    with pytest.raises(nats.js.errors.ServiceUnavailableError):  # nats-py's name for no responders
        await globex.jetstream(prefix=s.TENANT_JS_API_PREFIX).consumer_info(
            s.TENANT_PLACEMENTS.name, ACME_DURABLE.durable
        )


@pytest.mark.usefixtures("gateway")
async def test_a_relay_retry_is_stored_once_and_seen_once(connect: Connect) -> None:
    services_nc, acme = await connect("services"), await connect("acme")
    acme_seen = await collect(acme, ["placement.*"])
    event = decided("twice", tenant="acme")
    # The same event stored twice in PLACEMENTS under different message ids, as when it is
    # delivered again: the relay copies it twice, with the same Nats-Msg-Id (its event_id).
    await publish_copies(services_nc.jetstream(), [event, event], redeliver=True)
    # And a retried copy straight on the relay subject, as after a crash before the ack.
    relay = s.tenant_relay_subject("acme", s.PLACEMENT_DECIDED)
    retry = await services_nc.jetstream().publish(relay, ev.encode(event), headers={s.MSG_ID_HEADER: event.event_id})
    assert retry.stream == s.TENANT_PLACEMENTS.name
    await commit(services_nc, [decided("marker-acme", tenant="acme")])
    await acme_seen.wait("marker-acme")

    assert counts(acme_seen) == {"twice": 1, "marker-acme": 1}
    info = await services_nc.jetstream().stream_info(s.TENANT_PLACEMENTS.name)
    assert info.state.messages == 2  # "twice" once, and the marker


async def test_a_tenant_jobs_release_by_teardown_reaches_its_account(
    connect: Connect, services: Spawn, ec2_endpoint: str, tmp_path: Path
) -> None:
    await services("gateway", "teardown", env=aws_env(ec2_endpoint, write_config(tmp_path)))
    services_nc, acme = await connect("services"), await connect("acme")
    released = await collect(acme, [s.PLACEMENT_RELEASED])
    job = "ended-acme"
    accepted = ev.JobAccepted(event_id=ev.event_id_for(job, s.JOB_ACCEPTED), job_id=job, spec=SMALL_SPEC, tenant="acme")
    cancelled = ev.JobCancelRequested(event_id=ev.event_id_for(job, s.JOB_CANCEL_REQUESTED), job_id=job)
    await commit(services_nc, [accepted, cancelled])
    got = await released.wait(job, timeout=20)
    assert got["tenant"] == "acme" and got["reason"] == "cancelled"


@pytest.mark.usefixtures("gateway")
async def test_an_event_the_relay_cannot_copy_is_dead_lettered(connect: Connect) -> None:
    services_nc, acme = await connect("services"), await connect("acme")
    letters: asyncio.Queue[Msg] = asyncio.Queue()
    await services_nc.subscribe(s.deadletter_subject(SERVICE), cb=letters.put)
    acme_seen = await collect(acme, ["placement.*"])
    bad = msgspec.json.encode({"type": s.PLACEMENT_FAILED, "event_id": "bad", "job_id": "bad", "reason": "x"})
    bad = bad.replace(b'"reason"', b'"tenant":"ACME.x","reason"')  # not one subject token
    ack = await services_nc.jetstream().publish(
        s.commit_subject(s.PLACEMENT_FAILED), bad, headers={s.MSG_ID_HEADER: "bad"}
    )
    letter = msgspec.json.decode((await asyncio.wait_for(letters.get(), 20)).data)
    assert letter["stream_seq"] == ack.seq and "undecodable" in letter["reason"]
    await commit(services_nc, [decided("marker-acme", tenant="acme")])  # the relay went on
    await acme_seen.wait("marker-acme")
    assert counts(acme_seen) == {"marker-acme": 1}
