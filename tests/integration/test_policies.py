"""Placement policies on a real nats-server with the gateway, intake and placement processes
(§8.3 priorities and preemption, §8.5 topology and geography), watched as a Cluster Manager
does: a core subscriber on ``placement.decided`` / ``placement.degraded``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from tests.support.api import job, request
from tests.support.config import config
from tests.support.invariants import check_live
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration

Event = dict[str, Any]
FLEET = {  # node: (zone, (lat, lon))
    "fra-1": ("eu-central-1a", (50.11, 8.68)),
    "ber-1": ("eu-central-1b", (52.52, 13.40)),
    "muc-1": ("eu-central-1c", (48.14, 11.58)),
}


class Manager:
    """The Cluster Manager's view: every decided / degraded event, by job."""

    def __init__(self) -> None:
        self.by_job: dict[str, list[Event]] = {}
        self._changed = asyncio.Condition()

    async def cb(self, msg: Msg) -> None:
        data = json.loads(msg.data)
        async with self._changed:
            self.by_job.setdefault(data["job_id"], []).append(data)
            self._changed.notify_all()

    async def wait(self, job_id: str, pred: Callable[[Event], bool], timeout: float = 15.0) -> Event:
        def found() -> Event | None:
            return next((e for e in self.by_job.get(job_id, []) if pred(e)), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout)
            hit = found()
            assert hit is not None
            return hit


@pytest.fixture
async def manager(nc: Client) -> Manager:
    m = Manager()
    for subject in (s.PLACEMENT_DECIDED, s.PLACEMENT_DEGRADED):
        await nc.subscribe(subject, cb=m.cb)
    await nc.flush()
    return m


async def fleet(nc: Client, cpu: float = 4.0, extra: dict[str, float] | None = None) -> None:
    """The labelled, located fleet (and ``extra`` nodes in zone d, without a location)."""
    js = nc.jetstream()
    for nid, (zone, (lat, lon)) in FLEET.items():
        st = ev.NodeStatus(
            node_id=nid,
            state="active",
            technologies=["docker"],
            cpu_cores=cpu,
            cpu_free=cpu,
            memory_mb=16384,
            memory_free_mb=16384,
            labels={"zone": zone},
            location=ev.Location(lat=lat, lon=lon),
        )
        await js.publish(ev.subject_of(st), ev.encode(st))
    for nid, c in (extra or {}).items():
        st = ev.NodeStatus(
            node_id=nid,
            state="active",
            technologies=["docker"],
            cpu_cores=c,
            cpu_free=c,
            memory_mb=16384,
            memory_free_mb=16384,
            labels={"zone": "eu-central-1d"},
        )
        await js.publish(ev.subject_of(st), ev.encode(st))


async def place(nc: Client, body: bytes) -> Event:
    code, reply = await request(nc, s.PLACEMENT_REQUEST, body)
    assert code == 200 and reply["type"] == s.PLACEMENT_DECIDED, reply
    out: Event = reply
    return out


async def fill(nc: Client) -> dict[str, str]:
    """Six low-priority 2-cpu jobs (priorities 0-2) fill the three 4-cpu nodes; job -> node."""
    where = {}
    for i in range(6):
        d = await place(nc, job(f"low-{i}", 2, priority=i % 3))
        where[d["job_id"]] = d["assignments"][0]["node_id"]
    return where


async def test_a_high_priority_job_preempts_and_the_manager_sees_both_sides(
    nc: Client, services: Spawn, manager: Manager, tmp_path: Path
) -> None:
    await services("gateway", "intake", "placement", env=config(tmp_path))
    await fleet(nc)
    where = await fill(nc)
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
    report = await check_live(nc.jetstream(), require_release=False)
    assert report.ok, report


async def test_a_victim_moves_where_it_still_fits(
    nc: Client, services: Spawn, manager: Manager, tmp_path: Path
) -> None:
    await services("gateway", "intake", "placement", env=config(tmp_path))
    await fleet(nc)
    await fill(nc)
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
    report = await check_live(nc.jetstream(), require_release=False)
    assert report.ok, report


async def test_plan_shows_preemptions_and_stores_nothing_and_never_does_not_preempt(
    nc: Client, services: Spawn, manager: Manager, tmp_path: Path
) -> None:
    await services("gateway", "intake", "placement", env=config(tmp_path))
    await fleet(nc)
    await fill(nc)
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
    await services("gateway", "intake", "placement", env=config(tmp_path))
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
