"""Faults of a living fleet (§8.2) under load: a fifth of the node agents killed at once, ten
nodes drained through ``node.drain``, two instances of running dedicated jobs stopped
behind the scheduler's back (moto's EC2 API). Each fault says from when the system must
settle (``Injected.effect_at``); :func:`settle` watches the streams until it has."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import aioboto3
from nats.aio.client import Client
from nats.js import JetStreamContext

from schemas import events as ev
from schemas import subjects as s
from services.simnodes.fleet import Fleet
from tests.chaos.load import Load
from tests.support.invariants import Report, check_live, read_nodes, read_stream
from tests.support.system import System

SETTINGS = {"node_ttl_s": 4.0, "node_lost_s": 6.0, "placement_deadline_s": 10.0, "instance_check_s": 2.0}
"""Short timeouts for these rows (default node_lost_s is 30 s): the fleet reports every 1.5 s."""
SIM_INTERVAL = 1.5
FLEETS = 5
"""The fleet runs as five simnodes processes: killing one silences 20% of the nodes."""
LOST_S = SETTINGS["node_lost_s"]


class Injected(NamedTuple):
    faults: int
    effect_at: datetime | None = None
    """When the fault takes effect for the scheduler (a loss is detected ``node_lost_s`` after the
    last status): the time to settle is counted from here. None for the first-wave faults."""
    error: str | None = None
    decide: frozenset[str] = frozenset()
    """Jobs that must also be decided (placed or failed) for the system to have settled."""


def pinned_nodes(nodes: int, count: int = 3) -> list[str]:
    """The largest active docker nodes of fleet 0 (the one killed): jobs pinned to them become degraded."""
    fleet = Fleet(nodes // FLEETS, 42, "f0")
    fits = [n for n in fleet.base if n.state == "active" and "docker" in n.technologies]
    return [n.node_id for n in sorted(fits, key=lambda n: -n.cpu_cores)][:count]


async def kill_fifth_of_agents(sysm: System, nc: Client, load: Load, after: float) -> Injected:
    await asyncio.sleep(after)
    victim = sysm.fleets[0]
    victim.kill()
    killed = time.time()
    nodes = await read_nodes(nc.jetstream())
    lost = [v.last_at for n, v in nodes.items() if n.startswith("f0-")]
    # statuses published before the kill may still be on their way: the loss is detected at the latest
    last = max([*lost, datetime.fromtimestamp(killed, UTC)])
    return Injected(len(lost), last + timedelta(seconds=LOST_S))


async def _busiest_nodes(nc: Client, count: int) -> list[str]:
    latest: dict[str, ev.PlacementDecided] = {}
    released: set[str] = set()
    for e in await read_stream(nc.jetstream(), s.PLACEMENTS.name):
        if isinstance(e, ev.PlacementDecided) and e.cluster == "shared":
            latest[e.job_id] = e
        elif isinstance(e, ev.PlacementReleased):
            released.add(e.job_id)
    held = Counter(a.node_id for j, d in latest.items() if j not in released for a in d.assignments if a.node_id)
    return [n for n, _ in held.most_common(count)]


async def drain_ten(sysm: System, nc: Client, load: Load, after: float) -> Injected:
    await asyncio.sleep(after)
    errors = []
    nodes = await _busiest_nodes(nc, 10)
    for node_id in nodes:
        body = json.dumps({"node_id": node_id, "reason": "chaos"}).encode()
        try:
            r = await nc.request(s.NODE_DRAIN, body, timeout=5)
        except Exception as e:  # no responders, timeout: the row says so
            errors.append(f"{node_id}: {e!r}")
            continue
        if (r.headers or {}).get(s.ERROR_CODE_HEADER) or not json.loads(r.data).get("draining"):
            errors.append(f"{node_id}: {r.data[:200]!r}")
    return Injected(len(nodes), datetime.now(UTC), "; ".join(errors) or None)


async def provisioned(nc: Client, job_ids: set[str], want: int, timeout: float = 90) -> list[ev.ClusterProvisioned]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        done = [
            e
            for e in await read_stream(nc.jetstream(), s.CLUSTERS.name)
            if isinstance(e, ev.ClusterProvisioned) and e.job_id in job_ids
        ]
        if len(done) >= want or loop.time() > deadline:
            return done
        await asyncio.sleep(0.5)


async def stop_two_instances(sysm: System, nc: Client, load: Load, after: float) -> Injected:
    assert sysm.moto is not None
    spec = {
        "name": "chaos-dedicated",
        "cluster": "dedicated",
        "replicas": 2,
        "resources": {"cpu": 1, "memory_mb": 1024},
    }
    ids = await asyncio.gather(*(load.submit_one(10**6 + k, spec) for k in range(4)))
    running = await provisioned(nc, {j for j in ids if j}, 2)
    if len(running) < 2:
        return Injected(0, None, f"only {len(running)} dedicated jobs provisioned in time")
    await asyncio.sleep(after)
    victims = [c.instances[0].instance_id for c in running[:2]]
    session = aioboto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-central-1")
    async with session.client("ec2", endpoint_url=sysm.moto.endpoint_url) as ec2:
        await ec2.stop_instances(InstanceIds=victims)
    return Injected(len(victims), datetime.now(UTC))


async def _decided(js: JetStreamContext) -> set[str]:
    """Jobs with a first decision (placed or failed) in PLACEMENTS now."""
    return {
        e.job_id
        for e in await read_stream(js, s.PLACEMENTS.name)
        if (isinstance(e, ev.PlacementDecided) and e.revision == 1) or isinstance(e, ev.PlacementFailed)
    }


async def settle(
    nc: Client,
    effect_at: datetime,
    *,
    ec2_endpoint: str | None = None,
    timeout: float = 120,
    decide: Collection[str] = (),
) -> tuple[float | None, Report]:
    """Watch the streams until, after ``effect_at``, every live job is whole on usable nodes (or
    degraded), dedicated instances run and every job of ``decide`` is decided: (seconds from
    ``effect_at`` to the end of the read that found it settled, an upper bound; None on timeout;
    the report)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    js = nc.jetstream(timeout=10)
    while True:
        now = datetime.now(UTC)
        report = await check_live(js, require_release=False, node_lost_s=LOST_S, ec2_endpoint=ec2_endpoint)
        undecided = set(decide) - await _decided(js) if decide else set()
        if now >= effect_at and not report.unsettled and not undecided:  # settled by the end of this read at the latest
            return (datetime.now(UTC) - effect_at).total_seconds(), report
        if loop.time() > deadline:
            return None, report
        await asyncio.sleep(0.25)
