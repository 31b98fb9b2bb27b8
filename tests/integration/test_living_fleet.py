"""A living fleet through real nats-server and service processes (§8.1-8.2): a silent node's
replicas move (reason ``node_lost``), a fleet too small leaves a job degraded until a node
appears (also across a placement restart), drains move replicas and survive a restart,
and ``node.drain`` answers bad input with clear errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from schemas import subjects as s
from services.devstack import ServiceProcess
from tests.support.api import job, request
from tests.support.config import config
from tests.support.events import node
from tests.support.fleet import (
    Placements,
    decided,
    degraded,
    nodes_of,
    place,
    watch_placements,
)
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration

TTL, LOST = 1.0, 2.0
"""Short node TTL and node_lost_s, so a silent node is lost within seconds."""


@pytest.fixture
async def placements(nc: Client) -> Placements:
    return await watch_placements(nc)


@pytest.fixture
async def alive(nc: Client) -> AsyncIterator[dict[str, float]]:
    """Node agents: every node in the dict (id -> cpu) reports every 0.25 s; remove one to
    make it fall silent."""
    fleet: dict[str, float] = {}
    stop = asyncio.Event()

    async def beat() -> None:
        while not stop.is_set():
            for node_id, cpu in list(fleet.items()):
                await node(nc, node_id, cpu)
            with contextlib.suppress(TimeoutError):  # an agent's report interval, or the end
                await asyncio.wait_for(stop.wait(), 0.25)

    task = asyncio.create_task(beat())
    yield fleet
    stop.set()  # not cancel(): a cancellation inside a request may be swallowed by the client
    await asyncio.wait_for(task, 10)


async def start_apart(
    nc: Client, services: Spawn, env: dict[str, str], alive: dict[str, float], **cpus: float
) -> ServiceProcess:
    """Placement first (returned, to kill it later), then the gateway and intake; ``cpus``
    (node id -> cpu) become live nodes, each reported once before returning."""
    (placement,) = await services("placement", env=env)
    await services("gateway", "intake", env=env)
    alive.update(cpus)
    for node_id, cpu in cpus.items():
        await node(nc, node_id, cpu)
    return placement


async def test_a_silent_node_s_replicas_move_and_it_comes_back_empty(
    nc: Client, services: Spawn, placements: Placements, alive: dict[str, float], tmp_path: Path
) -> None:
    await services("gateway", "intake", "placement", env=config(tmp_path, node_ttl_s=TTL, node_lost_s=LOST))
    alive.update({"a": 8.0, "b": 6.0, "c": 4.0})
    await node(nc, "a", 8.0)
    await node(nc, "b", 6.0)
    await node(nc, "c", 4.0)
    first = await place(nc, job("web", 3, replicas=2, constraints={"spread": True}))
    assert first["revision"] == 1 and first["replicas"] == 2 and first["changes"] == []
    assert nodes_of(first) == {0: "a", 1: "b"}

    del alive["a"]  # a falls silent
    second = await placements.wait(first["job_id"], decided(2))
    assert nodes_of(second) == {0: "c", 1: "b"}  # spread: not b again
    assert second["changes"] == [{"replica": 0, "from": "a", "to": "c", "reason": "node_lost", "by": None}]
    assert second["event_id"] == f"{first['job_id']}:placement.decided:2"

    # a reports again: an ordinary empty node, its old reservation gone (8 cpu fit there)
    alive["a"] = 8.0
    await node(nc, "a", 8.0)
    big = await place(nc, job("big", 8))
    assert nodes_of(big) == {0: "a"}


async def test_a_fleet_too_small_degrades_the_job_until_a_node_appears_even_across_a_restart(
    nc: Client, services: Spawn, placements: Placements, alive: dict[str, float], tmp_path: Path
) -> None:
    env = config(tmp_path, node_ttl_s=TTL, node_lost_s=LOST)
    placement = await start_apart(nc, services, env, alive, a=4.0, b=4.0)
    first = await place(nc, job("pair", 3, replicas=2, constraints={"spread": True}))
    job_id = first["job_id"]
    lost = nodes_of(first)[0]

    del alive[lost]
    second = await placements.wait(job_id, decided(2))
    assert second["changes"] == [{"replica": 0, "from": lost, "to": None, "reason": "node_lost", "by": None}]
    assert [a["replica"] for a in second["assignments"]] == [1]
    gone = await placements.wait(job_id, degraded(2))
    assert gone["missing"] == [0] and gone["nodes_total"] == 2
    assert gone["event_id"] == f"{job_id}:placement.degraded:2"
    assert gone["excluded"]["inactive"] == 1 and gone["excluded"]["cpu"] == 1  # b holds replica 1

    placement.kill()
    await services("placement", env=env)  # degraded knowledge rebuilt from PLACEMENTS alone
    alive["c"] = 4.0
    await node(nc, "c", 4.0)
    third = await placements.wait(job_id, decided(3), timeout=20)
    assert nodes_of(third) == {0: "c", 1: nodes_of(first)[1]}
    assert third["changes"] == [{"replica": 0, "from": None, "to": "c", "reason": "node_lost", "by": None}]


async def test_a_drained_node_s_replicas_move_it_stays_drained_across_a_restart_and_undrain_restores_it(
    nc: Client, services: Spawn, placements: Placements, alive: dict[str, float], tmp_path: Path
) -> None:
    env = config(tmp_path, node_ttl_s=TTL, node_lost_s=LOST)
    placement = await start_apart(nc, services, env, alive, a=8.0, b=4.0)
    first = await place(nc, job("svc", 2))
    assert nodes_of(first) == {0: "a"}

    code, reply = await request(nc, s.NODE_DRAIN, {"node_id": "a", "reason": "kernel upgrade"})
    assert (code, reply) == (200, {"node_id": "a", "draining": True})
    second = await placements.wait(first["job_id"], decided(2))
    assert second["changes"] == [{"replica": 0, "from": "a", "to": "b", "reason": "drain", "by": None}]

    placement.kill()
    await services("placement", env=env)
    code, reply = await request(nc, s.PLACEMENT_REQUEST, job("after", 6), timeout=10)
    assert code == 504, reply  # only a has room for 6 cpu, and a is still drained
    waiting = reply["error"]["job_id"]

    code, reply = await request(nc, s.NODE_UNDRAIN, {"node_id": "a"})
    assert (code, reply) == (200, {"node_id": "a", "draining": False})
    after = await placements.wait(waiting, decided(1))
    assert nodes_of(after) == {0: "a"}  # a takes replicas again


async def test_node_drain_answers_bad_input_with_clear_errors(nc: Client, services: Spawn, tmp_path: Path) -> None:
    await services("placement", env=config(tmp_path))
    await node(nc, "known", 2.0)
    code, reply = await request(nc, s.NODE_DRAIN, {"node_id": "nobody"})
    assert code == 404 and "nobody" in reply["error"]["message"]
    code, reply = await request(nc, s.NODE_UNDRAIN, {"node_id": "nobody"})
    assert code == 404
    code, reply = await request(nc, s.NODE_DRAIN, b"{not json")
    assert code == 400 and "malformed JSON" in reply["error"]["message"]
    code, reply = await request(nc, s.NODE_DRAIN, {"node_id": "known", "extra": 1})
    assert code == 400 and reply["error"]["field"] == "extra"
    code, reply = await request(nc, s.NODE_DRAIN, {"node_id": "no.dots"})
    assert code == 400 and reply["error"]["field"] == "node_id"
    code, reply = await request(nc, s.NODE_UNDRAIN, {"node_id": "known", "reason": "x"})
    assert code == 400  # undrain takes no reason
    code, reply = await request(nc, s.NODE_DRAIN, {"node_id": "known"})
    assert (code, reply) == (200, {"node_id": "known", "draining": True})
