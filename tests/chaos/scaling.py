"""A resize row (§8.3): ``job.scale`` requests for shared and dedicated jobs in flight while the
placement service and the provisioner are killed -9 (and started again), under the living-fleet
load, racing with the load's cancels. Half of the dedicated jobs are cancelled at the end, so the
checker sees both a resized cluster that lives on and one that ended.

Settled means (``tests.support.settling``): every live job's latest revision wants the count of
its latest stored scale request, each live dedicated job runs one instance per replica of its
latest revision (EC2 by tag, so a replica launched twice across a crash shows), and nothing is
alive in EC2 under an ended job's tag."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from datetime import UTC, datetime

import nats.errors
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from tests.chaos.living import Injected, provisioned
from tests.chaos.load import Load
from tests.support.invariants import read_stream
from tests.support.system import System

DEDICATED = {"name": "chaos-resize", "cluster": "dedicated", "replicas": 2, "resources": {"cpu": 1, "memory_mb": 1024}}
ROUNDS = 6
"""Scale requests per job (each job's counts drawn from 1-4)."""
SHARED_JOBS = 12
KILLS = ("placement", "provisioner", "placement", "provisioner")


async def _placed_shared(nc: Client, count: int) -> list[str]:
    """Up to ``count`` shared jobs placed and not released, as PLACEMENTS says now."""
    placed: dict[str, None] = {}
    for e in await read_stream(nc.jetstream(), s.PLACEMENTS.name):
        if isinstance(e, ev.PlacementDecided) and e.cluster == "shared":
            placed[e.job_id] = None
        elif isinstance(e, ev.PlacementReleased):
            placed.pop(e.job_id, None)
    return list(placed)[-count:]


async def _request(nc: Client, subject: str, body: dict[str, object], key: str | None = None) -> str | None:
    """Send until answered (a retry carries the same ``Nats-Msg-Id``); the error code, None on success."""
    headers = {s.MSG_ID_HEADER: key} if key else None
    for attempt in range(40):
        try:
            r = await nc.request(subject, json.dumps(body).encode(), timeout=3, headers=headers)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(min(1.0, 0.1 * (attempt + 1)))
            continue
        code = (r.headers or {}).get(s.ERROR_CODE_HEADER)
        if code in ("503", "504"):
            await asyncio.sleep(0.2)
            continue
        return code
    return "no answer"


async def scale_under_kills(sysm: System, nc: Client, load: Load, after: float) -> Injected:
    ids = await asyncio.gather(*(load.submit_one(2 * 10**6 + k, DEDICATED) for k in range(4)))
    dedicated = [j for j in ids if j]
    running = await provisioned(nc, set(dedicated), len(dedicated))
    if len(running) < len(dedicated):
        return Injected(0, None, f"only {len(running)} of {len(dedicated)} dedicated jobs provisioned in time")
    await asyncio.sleep(after)
    targets = await _placed_shared(nc, SHARED_JOBS) + dedicated
    rng = random.Random(18)
    counts = {j: [rng.randint(1, 4) for _ in range(ROUNDS)] for j in targets}
    errors: list[str] = []
    stored = refused = 0

    async def scaler() -> None:
        nonlocal stored, refused
        for k in range(ROUNDS):
            for j in targets:
                code = await _request(nc, s.JOB_SCALE, {"job_id": j, "replicas": counts[j][k]}, f"resize-{j}-{k}")
                if code is None:
                    stored += 1
                elif code == "409":  # the load cancelled it meanwhile
                    refused += 1
                else:
                    errors.append(f"scale {j}: {code}")
            await asyncio.sleep(0.3)

    async def killer() -> int:
        for name in KILLS:
            await asyncio.sleep(1.0)
            sysm.procs[name][-1].kill()
            await asyncio.sleep(1.5)
            sysm.spawn(name)
        return len(KILLS)

    _, faults = await asyncio.gather(scaler(), killer())
    for j in dedicated[::2]:
        code = await _request(nc, s.JOB_CANCEL, {"job_id": j})
        if code not in (None, "409"):
            errors.append(f"cancel {j}: {code}")
    sys.stderr.write(
        f"   {stored} scale requests stored ({len(targets) - len(dedicated)} shared and {len(dedicated)} dedicated "
        f"jobs), {refused} refused as ended; {len(dedicated[::2])} dedicated jobs cancelled\n"
    )
    return Injected(faults, datetime.now(UTC), "; ".join(errors) or None)
