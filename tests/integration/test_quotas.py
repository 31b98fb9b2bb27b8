"""Tenant quotas (§8.4) against a real nats-server: jobs over a concurrent quota wait and are
placed when their tenant's usage drops or the quota is raised; a job over the compute budget is
rejected with the figures; two placement instances never decide past a quota together; usage
is the same on every instance and after a restart; tenants ask about themselves only.

Accepted jobs are published straight onto JOBS (as intake would, with a ``tenant``), and a
release as teardown would publish it, so only placement runs.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js import api as js_api

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Resources
from services.devstack import NatsServer
from tests.integration.test_placement_scaleout import wait_for_instances
from tests.support.api import request
from tests.support.events import SMALL_SPEC, Events, node, publish
from tests.support.servers import Spawn, nats_auth

pytestmark = pytest.mark.integration


def write(tmp_path: Path, tenants: str, **timeouts: float) -> dict[str, str]:
    """A SCHEDULER_CONFIG with ``tenants`` (TOML tables) and the given timeouts."""
    path = tmp_path / "scheduler.toml"
    t = {"placement_deadline_s": 60.0, "node_ttl_s": 120.0, **timeouts}
    path.write_text(
        'technologies = ["docker"]\n[timeouts]\n' + "".join(f"{k} = {v}\n" for k, v in t.items()) + tenants + "\n"
    )
    return {"SCHEDULER_CONFIG": str(path)}


def accepted(job_id: str, tenant: str, **spec: Any) -> ev.JobAccepted:
    return ev.JobAccepted(
        event_id=ev.event_id_for(job_id, s.JOB_ACCEPTED),
        job_id=job_id,
        spec=msgspec.structs.replace(SMALL_SPEC, name=job_id, **spec),
        submitted_at=datetime.now(UTC),
        tenant=tenant,
    )


def released(job_id: str, tenant: str) -> ev.PlacementReleased:
    return ev.PlacementReleased(
        event_id=ev.event_id_for(job_id, s.PLACEMENT_RELEASED), job_id=job_id, reason="succeeded", tenant=tenant
    )


async def ok(nc: Client, subject: str, body: dict[str, Any]) -> Any:
    code, reply = await request(nc, subject, body)
    assert code == 200, reply
    return reply


async def considered(nc: Client, decisions: Events, *job_ids: str) -> None:
    """Wait until placement has looked at every accepted job before a marker of another tenant's
    (decided in priority, then submission order): each of ``job_ids`` is decided or waiting."""
    marker = f"marker-{job_ids[-1]}"
    await publish(nc.jetstream(), [accepted(marker, "markers")])
    await decisions.wait(marker, timeout=20)


@pytest.fixture
async def decisions(events) -> Events:  # type: ignore[no-untyped-def]
    return await events(s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.JOB_REJECTED)  # type: ignore[no-any-return]


async def test_a_job_over_a_quota_waits_and_goes_when_usage_drops_or_the_quota_is_raised(
    nc: Client, services: Spawn, decisions: Events, tmp_path: Path
) -> None:
    await services("placement", env=write(tmp_path, "[tenants.acme]\ncpu = 2.0\n"))
    await node(nc, "n1", 16)
    js = nc.jetstream()
    await publish(js, [accepted(f"a{i}", "acme") for i in range(4)])
    for j in ("a0", "a1"):
        assert (await decisions.wait(j))["tenant"] == "acme"
    await considered(nc, decisions, "a2", "a3")
    assert "a2" not in decisions.by_job and "a3" not in decisions.by_job  # waiting at the quota

    usage = await ok(nc, s.TENANT_USAGE, {"tenant": "acme"})
    assert usage["usage"]["cpu"] == 2 and usage["usage"]["jobs"] == 2 and usage["quota"]["cpu"] == 2
    assert (await ok(nc, s.QUOTA_GET, {"tenant": "acme"}))["source"] == "config"

    await publish(js, [released("a0", "acme")])  # as teardown would: acme uses 1 of 2 now
    d = await decisions.wait("a2", timeout=20)
    assert d["type"] == s.PLACEMENT_DECIDED and d["tenant"] == "acme"
    await considered(nc, decisions, "a3")
    assert "a3" not in decisions.by_job

    reply = await ok(nc, s.QUOTA_SET, {"tenant": "acme", "quota": {"cpu": 3}})
    assert reply == {"tenant": "acme", "quota": {**reply["quota"], "cpu": 3.0}, "source": "runtime"}
    assert (await decisions.wait("a3", timeout=20))["type"] == s.PLACEMENT_DECIDED
    got = await ok(nc, s.QUOTA_GET, {"tenant": "acme"})
    assert got["source"] == "runtime" and got["quota"]["cpu"] == 3


async def test_a_job_that_waits_at_a_quota_fails_at_its_deadline_with_the_reason(
    nc: Client, services: Spawn, decisions: Events, tmp_path: Path
) -> None:
    await services("placement", env=write(tmp_path, "[tenants.acme]\njobs = 1\n", placement_deadline_s=2.0))
    await node(nc, "n1", 16)
    await publish(nc.jetstream(), [accepted("a0", "acme"), accepted("a1", "acme")])
    assert (await decisions.wait("a0"))["type"] == s.PLACEMENT_DECIDED
    failed = await decisions.wait("a1", timeout=20)
    assert failed["type"] == s.PLACEMENT_FAILED
    assert failed["reason"] == "quota: tenant acme uses 1 of 1 jobs"
    assert failed["excluded"]["quota"] == failed["nodes_total"] == 1
    assert failed["tenant"] == "acme"


async def test_a_job_over_the_compute_budget_is_rejected_with_the_figures(
    nc: Client, services: Spawn, decisions: Events, tmp_path: Path
) -> None:
    await services("placement", env=write(tmp_path, "[tenants.acme]\ncpu_hours = 3.0\n"))
    await node(nc, "n1", 16)
    js = nc.jetstream()
    big = accepted("big", "acme", resources=Resources(cpu=2, memory_mb=1), replicas=1, max_runtime_s=7200)
    fits = accepted("fits", "acme", resources=Resources(cpu=1, memory_mb=1), max_runtime_s=3600)
    await publish(js, [big, fits, accepted("free", "acme")])  # "free": no max_runtime_s, budget not used up
    rejected = await decisions.wait("big")
    assert rejected["type"] == s.JOB_REJECTED
    assert rejected["reason"] == (
        "quota: tenant acme used 0 of 3 cpu_hours in the last 30 days; "
        "this job may use 4 more (2 cpu x 1 replicas x 7200 s)"
    )
    assert (await decisions.wait("fits"))["type"] == s.PLACEMENT_DECIDED
    assert (await decisions.wait("free"))["type"] == s.PLACEMENT_DECIDED


async def test_two_instances_never_decide_past_a_quota_together(
    nc: Client, services: Spawn, decisions: Events, tmp_path: Path
) -> None:
    env = write(tmp_path, "[tenants.acme]\njobs = 5\ncpu = 100.0\n", placement_deadline_s=3.0)
    await services("placement", "placement", env=env, wait=False)
    await wait_for_instances(nc, "placement", 2)
    for i in range(4):
        await node(nc, f"n{i}", 16)
    ids = [f"burst-{i}" for i in range(40)]
    await publish(nc.jetstream(), [accepted(j, "acme") for j in ids])
    outcomes = [await decisions.wait(j, timeout=45) for j in ids]
    placed = [o for o in outcomes if o["type"] == s.PLACEMENT_DECIDED]
    assert len(placed) == 5
    assert {o["reason"] for o in outcomes if o["type"] == s.PLACEMENT_FAILED} == {"quota: tenant acme uses 5 of 5 jobs"}
    # the stream itself: never more than 5 of acme's jobs decided (nothing was released)
    stored = await stored_placements(nc)
    assert len({e.job_id for e in stored if isinstance(e, ev.PlacementDecided) and e.tenant == "acme"}) == 5


_placement = msgspec.json.Decoder(ev.PlacementEvents)


async def stored_placements(nc: Client) -> list[ev.Event]:
    js = nc.jetstream()
    info = await js.stream_info(s.PLACEMENTS.name)
    sub = await js.subscribe(
        "",
        stream=s.PLACEMENTS.name,
        ordered_consumer=True,
        config=js_api.ConsumerConfig(filter_subjects=list(s.PLACEMENTS.subjects)),
    )
    out: list[ev.Event] = []
    try:
        while len(out) < info.state.messages:
            msg = await sub.next_msg(timeout=5)
            out.append(_placement.decode(msg.data))
    finally:
        await sub.unsubscribe()
    return out


async def test_usage_is_the_same_on_every_instance_and_after_a_restart(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    from services.placement.service import Placement
    from services.runtime.app import start_runtime
    from services.runtime.config import load_config, load_settings
    from services.runtime.credentials import client_environ
    from services.runtime.streams import ensure_streams

    write(tmp_path, "[tenants.acme]\ncpu = 8.0\n")
    settings = load_settings({"NATS_URL": nats_server.url, "LOG_LEVEL": "warning", **client_environ()})
    config = load_config(tmp_path / "scheduler.toml")

    async def instance() -> Placement:
        p = Placement(await start_runtime("placement", settings, config))
        await p.follow_nodes()
        await p.replay_ledger()
        await p.follow_quotas()
        return p

    await ensure_streams(nc.jetstream())
    await node(nc, "n1", 16)
    first = await instance()
    run = asyncio.create_task(first.decider_loop())
    loop = asyncio.get_running_loop()
    from services.placement.decider import Pending

    for i in range(3):
        e = accepted(f"u{i}", "acme", resources=Resources(cpu=2, memory_mb=64), replicas=1)
        assert await first.decide(Pending(e, None, loop.time() + 60, i)) == "decided"  # type: ignore[arg-type]
    await publish(nc.jetstream(), [released("u0", "acme")])
    second = await instance()  # started after: rebuilds from PLACEMENTS

    async def caught_up() -> None:
        while "u0" in first.ledger.accounts.live:  # noqa: ASYNC110 (in-process state)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(caught_up(), 10)
    now = datetime.now(UTC).timestamp()
    a, b = (p.ledger.accounts.usage("acme", now) for p in (first, second))
    assert a == b
    assert (a.cpu, a.jobs) == (4.0, 2)
    first.rt.stop.set()
    await run
    await first.rt.nc.close()
    await second.rt.nc.close()
    third = await instance()  # a restart
    assert third.ledger.accounts.usage("acme", now) == a
    third.rt.stop.set()
    await third.rt.nc.close()


async def test_a_tenant_asks_about_itself_only(
    nc: Client, nats_server: NatsServer, services: Spawn, tmp_path: Path
) -> None:
    await services("placement", env=write(tmp_path, "[tenants.acme]\ncpu = 4.0\n[tenants.globex]\ncpu = 1.0\n"))
    acme = await nats.connect(nats_server.url, **nats_auth("acme"))
    try:
        own = await ok(acme, s.QUOTA_GET, {})
        assert own["tenant"] == "acme" and own["quota"]["cpu"] == 4
        assert (await ok(acme, s.TENANT_USAGE, {"tenant": "acme"}))["tenant"] == "acme"
        code, body = await request(acme, s.TENANT_USAGE, {"tenant": "globex"})
        assert code == 404, body
        code, body = await request(acme, s.QUOTA_GET, {"tenant": "globex"})
        assert code == 404, body
        with pytest.raises(nats.errors.NoRespondersError):  # not imported, not permitted
            await acme.request(s.QUOTA_SET, json.dumps({"tenant": "acme", "quota": {}}).encode(), timeout=2)
    finally:
        await acme.close()
    code, body = await request(nc, s.QUOTA_SET, {"tenant": "acme", "quota": {"cpu": -1}})
    assert code == 400, body
    assert (await ok(nc, s.QUOTA_GET, {"tenant": "globex"}))["quota"]["cpu"] == 1
