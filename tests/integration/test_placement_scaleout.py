"""Several placement instances against the same streams: every job decided once, no
node ever booked beyond its capacity, and the others carry on when one is killed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from schemas import subjects as s
from tests.support.api import job
from tests.support.config import config
from tests.support.events import node
from tests.support.invariants import check_live
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration


async def wait_for_instances(nc: Client, name: str, count: int, timeout: float = 30) -> None:
    """Until ``count`` distinct instances of ``name`` answer ``$SRV.PING.<name>``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: set[str] = set()
    changed = asyncio.Event()
    inbox = nc.new_inbox()

    async def on_pong(msg) -> None:  # type: ignore[no-untyped-def]
        seen.add(json.loads(msg.data)["id"])
        changed.set()

    sub = await nc.subscribe(inbox, cb=on_pong)
    try:
        while len(seen) < count:
            if loop.time() > deadline:
                raise TimeoutError(f"only {len(seen)} of {count} {name} instances answered")
            changed.clear()
            await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
            try:
                await asyncio.wait_for(changed.wait(), 0.5)
            except TimeoutError:
                pass
    finally:
        await sub.unsubscribe()


async def test_three_placement_instances_never_overbook_and_survive_a_kill(
    nc: Client, services: Spawn, events, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = config(tmp_path, placement_deadline_s=4, node_ttl_s=120)
    await services("gateway", "intake", env=env)
    for i in range(4):  # 4 nodes x 8 cpu: room for exactly 32 one-cpu jobs
        await node(nc, f"c{i}", 8)
    placements = await services("placement", "placement", "placement", env=env, wait=False)
    await wait_for_instances(nc, "placement", 3)
    decisions = await events(s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.JOB_REJECTED)

    async def submit(i: int) -> str:
        reply = await nc.request(s.JOB_SUBMIT, job(f"contended-{i}", 1, request_id=f"k-{i}"), timeout=10)
        return str(json.loads(reply.data)["job_id"])

    first = await asyncio.gather(*(submit(i) for i in range(120)))
    placements[0].kill()  # mid-run, while the others hold and decide
    rest = await asyncio.gather(*(submit(i) for i in range(120, 200)))
    ids = first + rest
    for j in ids:
        await decisions.wait(j, timeout=45)

    report = await check_live(nc.jetstream(), submitted_ids=ids)
    assert report.ok, report
    assert report.jobs == 200
    assert report.decided == 32  # the fleet is full, never over-full
    assert report.decided + report.failed == 200


async def test_two_instances_deciding_at_the_same_moment_never_double_book(nc: Client, nats_server) -> None:  # type: ignore[no-untyped-def]
    """Two placement instances in one process, each with an up-to-date ledger, decide at
    the same moment for the last free capacity: the stream's expected-last-sequence check
    refuses the second decision, which is redone on the caught-up ledger and waits."""
    from datetime import UTC, datetime

    from schemas import events as ev
    from schemas.jobs import Defaults, decode_job_request, normalise
    from services.placement.decider import Pending
    from services.placement.service import Placement
    from services.runtime.app import start_runtime
    from services.runtime.config import load_config, load_settings
    from services.runtime.credentials import client_environ

    settings = load_settings({"NATS_URL": nats_server.url, "LOG_LEVEL": "warning", **client_environ()})
    instances = [Placement(await start_runtime("placement", settings, load_config())) for _ in range(2)]
    await node(nc, "only", 2)
    tasks = []
    for p in instances:
        await p.follow_nodes()
        await p.replay_ledger()
        tasks.append(asyncio.create_task(p.decider_loop()))
    loop = asyncio.get_running_loop()

    async def both_know_the_node() -> None:
        while not all("only" in p.world.nodes for p in instances):  # noqa: ASYNC110 (in-process state)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(both_know_the_node(), 10)

    spec = normalise(decode_job_request(b'{"name": "x", "resources": {"cpu": 2, "memory_mb": 512}}'), Defaults())
    now = datetime.now(UTC)

    def pending(job_id: str, order: int) -> Pending:
        accepted = ev.JobAccepted(event_id=f"{job_id}:a", job_id=job_id, spec=spec, submitted_at=now)
        return Pending(accepted, None, loop.time() + 60, order)  # type: ignore[arg-type]

    outcomes = await asyncio.gather(instances[0].decide(pending("x", 1)), instances[1].decide(pending("y", 2)))
    assert sorted(outcomes) == ["decided", "pending"]
    assert sum(p.stats["conflicts"] for p in instances) >= 1
    report = await check_live(nc.jetstream(), require_release=False)
    assert report.decided == 1 and report.overbooked == []
    for p in instances:
        p.rt.stop.set()
    await asyncio.gather(*tasks)
    for p in instances:
        await p.rt.nc.close()


async def test_a_starting_instance_loads_the_fleet_then_follows_live_reports(nc: Client, nats_server) -> None:  # type: ignore[no-untyped-def]
    """Statuses stored before start come from the NODES stream (its last one per node);
    later ones arrive on the core subscription; a node's latest report is what counts."""
    from services.placement.service import Placement
    from services.runtime.app import start_runtime
    from services.runtime.config import load_config, load_settings
    from services.runtime.credentials import client_environ
    from services.runtime.streams import ensure_streams

    await ensure_streams(nc.jetstream())
    for i in range(50):
        await node(nc, f"old-{i}", 2)
    await node(nc, "old-0", 6)  # superseded: the snapshot holds only this last one
    settings = load_settings({"NATS_URL": nats_server.url, "LOG_LEVEL": "warning", **client_environ()})
    p = Placement(await start_runtime("placement", settings, load_config()))
    try:
        await p.follow_nodes()
        assert {f"old-{i}" for i in range(50)} <= set(p.world.nodes)
        assert p.world.nodes["old-0"].status.cpu_free == 6
        await node(nc, "new", 3)
        await node(nc, "old-1", 5)

        async def live() -> None:
            while "new" not in p.world.nodes or p.world.nodes["old-1"].status.cpu_free != 5:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        await asyncio.wait_for(live(), 10)
    finally:
        await p.rt.nc.close()
