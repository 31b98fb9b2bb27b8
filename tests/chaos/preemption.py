"""A preemption row (§8.3): the fleet filled with low-priority shared jobs, then high-priority jobs
that fit only by preempting arrive in bursts while the placement service is killed -9 (twice,
each time a moment after a burst) and started again, under the living-fleet load and its cancels.

The invariant checker proves that every victim's change (reason ``preempted``) names a job of
strictly higher priority whose decision lists it, stored before that decision, and that no node
is overbooked at any step. Settled means, from the last restart: every live job whole on usable
nodes or degraded, and every preempting job decided."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from services.simnodes.fleet import Fleet
from tests.chaos.living import FLEETS, Injected
from tests.chaos.load import Load
from tests.support.invariants import read_stream
from tests.support.system import System

NODES = 50
"""A small fleet (10 nodes per fleet process), so filling it takes a few hundred jobs."""
FILL_CPU = 2.0
FILL = {"name": "chaos-fill", "replicas": 1, "resources": {"cpu": FILL_CPU, "memory_mb": 1024}}
URGENT = {"name": "chaos-urgent", "resources": {"cpu": 8, "memory_mb": 4096}}
"""8 cpu fits only on a node of 16 cores or more once the fill is in: it must preempt."""
BURSTS = 4
PER_BURST = 4
KILL_AFTER = (0, 2)
"""The bursts after which placement is killed -9 (a moment after their submits were answered)."""


def fleet_cpu(nodes: int) -> float:
    """The cores of the active docker nodes of the row's fleet (the simnodes processes' own fleets)."""
    fleets = [Fleet(nodes // FLEETS, 42 + g, f"f{g}") for g in range(FLEETS)]
    return sum(n.cpu_cores for f in fleets for n in f.base if n.state == "active" and "docker" in n.technologies)


async def _placed(nc: Client, job_ids: Iterable[str]) -> set[str]:
    """Which of ``job_ids`` have a first decision in PLACEMENTS now."""
    ids = set(job_ids)
    return {
        e.job_id
        for e in await read_stream(nc.jetstream(), s.PLACEMENTS.name)
        if isinstance(e, ev.PlacementDecided) and e.revision == 1 and e.job_id in ids
    }


async def _fill(nc: Client, load: Load, timeout: float = 60) -> tuple[list[str], int]:
    """Submit low-priority 2-cpu jobs for one and a half times the fleet's cores (the load's cancels
    free room that pending ones take) and wait until placing stops: (their ids, how many placed)."""
    count = int(1.5 * fleet_cpu(NODES) / FILL_CPU)
    rng = random.Random(19)
    gate = asyncio.Semaphore(32)

    async def one(k: int) -> str | None:
        async with gate:
            return await load.submit_one(3 * 10**6 + k, {**FILL, "priority": rng.randint(1, 3)})

    ids = [j for j in await asyncio.gather(*(one(k) for k in range(count))) if j]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    placed = -1
    while loop.time() < deadline:
        now = len(await _placed(nc, ids))
        if now == placed:  # nothing placed in the last second: the fleet is full (or every job placed)
            break
        placed = now
        await asyncio.sleep(1.0)
    return ids, placed


async def preempt_under_kills(sysm: System, nc: Client, load: Load, after: float) -> Injected:
    fill, placed = await _fill(nc, load)
    if placed >= len(fill):
        return Injected(0, None, f"all {len(fill)} fill jobs placed: the fleet never filled up")
    rng = random.Random(20)
    urgent: list[str] = []
    errors: list[str] = []
    faults = 0
    restarted = datetime.now(UTC)
    for b in range(BURSTS):
        specs = [
            {
                **URGENT,
                "priority": (100, 110, 120)[(b * PER_BURST + k) % 3],
                "replicas": 1 + (k % 2),
                # the last burst: one job that may not preempt (fails or fits as it is)
                **({"preemption": "never", "priority": 200} if b == BURSTS - 1 and k == 0 else {}),
            }
            for k in range(PER_BURST)
        ]
        ids = await asyncio.gather(*(load.submit_one(4 * 10**6 + b * PER_BURST + k, sp) for k, sp in enumerate(specs)))
        urgent += [j for j in ids if j]
        errors += [f"burst {b} job {k}: no submitted reply" for k, j in enumerate(ids) if not j]
        if b in KILL_AFTER:
            await asyncio.sleep(rng.uniform(0.05, 0.4))  # deciding, publishing the chain, or acking
            sysm.procs["placement"][-1].kill()
            faults += 1
            await asyncio.sleep(1.5)
            sysm.spawn("placement")
            restarted = datetime.now(UTC)
        await asyncio.sleep(1.0)
    sys.stderr.write(
        f"   {len(fill)} fill jobs ({placed} placed before the bursts), {len(urgent)} urgent jobs in {BURSTS} "
        f"bursts, placement killed -9 {faults} times\n"
    )
    return Injected(faults, restarted, "; ".join(errors) or None, decide=frozenset(urgent))
