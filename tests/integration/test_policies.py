"""Placement policies on a real nats-server with the gateway, intake and placement processes
(§8.3 priorities and preemption, §8.5 topology and geography), watched as a Cluster Manager
does: a core subscriber on ``placement.decided`` / ``placement.degraded``."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from tests.support.api import job, request
from tests.support.config import config
from tests.support.events import free_node
from tests.support.fleet import Placements, consistent, place, start_placement, watch_placements
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration

FLEET = {  # node: (zone, (lat, lon))
    "fra-1": ("eu-central-1a", (50.11, 8.68)),
    "ber-1": ("eu-central-1b", (52.52, 13.40)),
    "muc-1": ("eu-central-1c", (48.14, 11.58)),
}


@pytest.fixture
async def manager(nc: Client) -> Placements:
    """The Cluster Manager's view: every decided / degraded event, by job."""
    return await watch_placements(nc)


async def fleet(nc: Client, cpu: float = 4.0, extra: dict[str, float] | None = None) -> None:
    """The labelled, located fleet (and ``extra`` nodes in zone d, without a location)."""
    js = nc.jetstream()
    for nid, (zone, (lat, lon)) in FLEET.items():
        st = free_node(nid, cpu, labels={"zone": zone}, location=ev.Location(lat=lat, lon=lon))
        await js.publish(ev.subject_of(st), ev.encode(st))
    for nid, c in (extra or {}).items():
        st = free_node(nid, c, labels={"zone": "eu-central-1d"})
        await js.publish(ev.subject_of(st), ev.encode(st))


async def fill(nc: Client) -> dict[str, str]:
    """Six low-priority 2-cpu jobs (priorities 0-2) fill the three 4-cpu nodes; job -> node."""
    where = {}
    for i in range(6):
        d = await place(nc, job(f"low-{i}", 2, priority=i % 3))
        where[d["job_id"]] = d["assignments"][0]["node_id"]
    return where


@pytest.fixture
async def filled(nc: Client, services: Spawn, manager: Placements, tmp_path: Path) -> dict[str, str]:
    """Placement running over the fleet, filled by :func:`fill` (the manager watching from the start)."""
    await start_placement(services, tmp_path)
    await fleet(nc)
    return await fill(nc)


async def test_a_high_priority_job_preempts_and_the_manager_sees_both_sides(
    nc: Client, manager: Placements, filled: dict[str, str]
) -> None:
    where = filled
    urgent = await place(nc, job("urgent", 2, priority=500))
    (victim,) = urgent["preempted"]
    # one 2-cpu victim of priority 0 (the fewest, lowest), on the node the urgent job now holds
    assert victim["job_id"] in where and victim["replica"] == 0
    assert urgent["assignments"] == [{"replica": 0, "node_id": victim["node_id"]}]
    low = [j for j, _ in where.items() if int(manager.by_job[j][0]["priority"]) == 0]
    assert victim["job_id"] in low

    revised = await manager.wait(victim["job_id"], lambda e: e["type"] == s.PLACEMENT_DECIDED and e["revision"] == 2)
    assert revised["changes"] == [
        {"replica": 0, "from": victim["node_id"], "to": None, "reason": "preempted", "by": urgent["job_id"]}
    ]
    gone = await manager.wait(victim["job_id"], lambda e: e["type"] == s.PLACEMENT_DEGRADED)
    assert gone["missing"] == [0] and gone["reason"].startswith(f"preempted by {urgent['job_id']}: ")
    await consistent(nc)


async def test_a_victim_moves_where_it_still_fits(nc: Client, manager: Placements, filled: dict[str, str]) -> None:
    await fleet(nc, extra={"spare": 2.0})  # room for one 2-cpu victim, not for a 4-cpu job
    urgent = await place(nc, job("urgent", 4, priority=500))
    assert len(urgent["preempted"]) == 2  # a whole 4-cpu node: both of its replicas
    moved = []
    for v in urgent["preempted"]:
        e = await manager.wait(v["job_id"], lambda e: e["type"] == s.PLACEMENT_DECIDED and e["revision"] == 2)
        (change,) = e["changes"]
        assert change["reason"] == "preempted" and change["by"] == urgent["job_id"]
        moved.append(change["to"])
    assert sorted(moved, key=str) == sorted([None, "spare"], key=str)  # one moves, one is degraded
    await consistent(nc)


async def test_plan_shows_preemptions_and_stores_nothing_and_never_does_not_preempt(
    nc: Client, manager: Placements, filled: dict[str, str]
) -> None:
    body = {"name": "urgent", "resources": {"cpu": 2, "memory_mb": 512}, "priority": 500}
    code, plan = await request(nc, s.PLACEMENT_PLAN, body)
    assert code == 200 and len(plan["preemptions"]) == 1, plan
    code, again = await request(nc, s.PLACEMENT_PLAN, body)  # nothing was booked or stored
    assert again == plan
    assert all(len(events) == 1 for events in manager.by_job.values())

    code, never = await request(nc, s.PLACEMENT_PLAN, {**body, "preemption": "never"})
    assert code == 200 and never["failure"]["reason"].endswith("the job says preemption: never"), never
    code, one = await request(nc, s.PLACEMENT_PLAN, {**body, "priority": 1})  # only priority 0 is below
    (victim,) = one["preemptions"]
    assert manager.by_job[victim["job_id"]][0]["priority"] == 0


async def test_preemption_off_in_the_config(nc: Client, services: Spawn, tmp_path: Path) -> None:
    env = config(tmp_path)
    path = Path(env["SCHEDULER_CONFIG"])
    path.write_text(path.read_text() + "[placement]\npreemption = false\n")
    await services("gateway", "intake", "placement", env=env)
    await fleet(nc)
    await fill(nc)
    body = {"name": "urgent", "resources": {"cpu": 2, "memory_mb": 512}, "priority": 500}
    code, plan = await request(nc, s.PLACEMENT_PLAN, body)
    assert code == 200 and "preemption is off" in plan["failure"]["reason"], plan


async def test_spread_by_zone_and_near_through_placement_request(nc: Client, services: Spawn, tmp_path: Path) -> None:
    await start_placement(services, tmp_path)
    await fleet(nc, cpu=8.0, extra={"big": 64.0})
    spread = await place(nc, job("spread", 1, replicas=3, constraints={"spread_by": "zone"}))
    zones = {FLEET.get(a["node_id"], ("eu-central-1d",))[0] for a in spread["assignments"]}
    assert len(zones) == 3  # one per zone (big, with its 64 cpu, takes one in zone d; a zone has none twice)

    near = {"lat": 52.39, "lon": 13.06, "max_km": 200}  # Potsdam: only Berlin is that close
    close = await place(nc, job("close", 1, strategy="nearest", constraints={"near": near}))
    assert close["assignments"] == [{"replica": 0, "node_id": "ber-1"}]
    assert close["candidates"][0]["distance_km"] == pytest.approx(26, abs=2)

    code, far = await request(nc, s.PLACEMENT_PLAN, {"name": "far", "constraints": {"near": {**near, "max_km": 5}}})
    assert code == 200 and far["failure"]["excluded"]["distance"] == 4, far
    code, bad = await request(nc, s.JOB_SUBMIT, {"name": "bad", "strategy": "nearest"})
    assert code == 400 and "constraints.near" in bad["error"]["message"], bad
