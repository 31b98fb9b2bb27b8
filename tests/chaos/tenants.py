"""A tenants row (§8.4): two tenants submit through their own accounts beside the default load,
one of them (``acme``) at a concurrent quota set at run time (``quota.set``), while placement
and metadata are killed -9 (and started again) mid-run.

Besides the invariant checker, the row replays PLACEMENTS through placement's own accounting
(:class:`services.placement.quotas.Accounts`) and is red if ``acme``'s concurrent usage was over
its quota after any stored event, or if no ``acme`` job ever waited at the quota (then the row
proved nothing about quotas).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import msgspec
import nats
import nats.errors
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from schemas.replies import Quota
from services.placement.quotas import Accounts
from services.runtime.credentials import Role
from tests.chaos.living import Injected
from tests.chaos.load import Load
from tests.support.invariants import read_stream
from tests.support.servers import nats_auth
from tests.support.system import System

AT_QUOTA = "acme"
QUOTA = Quota(cpu=4.0)
"""acme's quota: 8 of the load's 0.5-cpu jobs at once."""
TENANT_RATE = 5.0
KILLS = ("placement", "metadata")


async def _quota_set(nc: Client, tenant: str, quota: Quota) -> None:
    body = json.dumps({"tenant": tenant, "quota": msgspec.to_builtins(quota)})
    for _ in range(40):
        try:
            r = await nc.request(s.QUOTA_SET, body.encode(), timeout=3)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.25)
            continue
        if not (r.headers or {}).get(s.ERROR_CODE_HEADER):
            return
        await asyncio.sleep(0.25)
    raise RuntimeError("quota.set never answered")


async def _decided(nc: Client, job_ids: set[str], timeout: float = 120.0) -> None:
    """Until every one of ``job_ids`` is decided, failed or rejected, as the streams say."""
    deadline = time.perf_counter() + timeout
    outcomes = (ev.PlacementDecided, ev.PlacementFailed, ev.JobRejected)
    while time.perf_counter() < deadline:
        done = {
            e.job_id
            for name in (s.JOBS.name, s.PLACEMENTS.name)
            for e in await read_stream(nc.jetstream(), name)
            if isinstance(e, outcomes)
        }
        if job_ids <= done:
            return
        await asyncio.sleep(0.5)


def over_quota(events: list[ev.Event], tenant: str, quota: Quota) -> tuple[float, int, str | None]:
    """Replay PLACEMENTS: ``tenant``'s highest concurrent cpu, how many of its jobs failed at the
    quota, and the first event that took it over, if any."""
    accounts = Accounts()
    peak, waited = 0.0, 0
    for e in events:
        match e:
            case ev.PlacementDecided():
                accounts.decided(e)
            case ev.PlacementReleased():
                accounts.released(e.job_id, e.at)
            case ev.PlacementFailed() if e.tenant == tenant and e.reason.startswith("quota:"):
                waited += 1
        cpu = accounts.used(tenant).cpu_m / 1000
        peak = max(peak, cpu)
        if quota.cpu is not None and cpu > quota.cpu:
            return peak, waited, f"{tenant} at {cpu:g} cpu over its quota of {quota.cpu:g} after {e.event_id}"
    return peak, waited, None


async def tenants_under_kills(sysm: System, nc: Client, load: Load, kill_at: float) -> Injected:
    """acme (at its quota) and globex submit beside the default load; placement then metadata
    are killed -9 and started again ``kill_at`` into it."""
    await _quota_set(nc, AT_QUOTA, QUOTA)
    url = sysm.env["NATS_URL"].split(",")
    roles: tuple[Role, ...] = ("acme", "globex")  # acme: AT_QUOTA
    clients = {t: await nats.connect(url, **nats_auth(t), max_reconnect_attempts=240) for t in roles}
    loads = {t: Load(c, rate=TENANT_RATE) for t, c in clients.items()}
    for tl in loads.values():
        await tl.start()
    duration = 3 * kill_at
    runs = [asyncio.create_task(tl.run(duration)) for tl in loads.values()]
    await asyncio.sleep(kill_at)
    faults = 0
    for name in KILLS:
        if name in sysm.procs:
            sysm.procs[name][-1].kill()
            faults += 1
            await asyncio.sleep(1.0)
            sysm.spawn(name)
    await asyncio.gather(*runs)
    for tl in loads.values():
        await tl.cancels_done()
        load.submitted.update(tl.submitted)  # the harness waits for them and checks them too
    await _decided(nc, {j for tl in loads.values() for j in tl.submitted.values()})
    for c in clients.values():
        await c.close()
    placements = await read_stream(nc.jetstream(), s.PLACEMENTS.name)
    peak, waited, error = over_quota(placements, AT_QUOTA, QUOTA)
    sys.stderr.write(
        f"   {AT_QUOTA}: peak {peak:g} of {QUOTA.cpu:g} cpu, {waited} job(s) failed waiting at the quota\n"
    )
    if error is None and not waited:
        error = f"no {AT_QUOTA} job ever waited at its quota"
    return Injected(faults, error=error)
