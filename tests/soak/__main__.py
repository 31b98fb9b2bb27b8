"""``python -m tests.soak [--jobs N] [--rate R] [--every K]`` (``make soak``): an accelerated month.

The whole system (``tests.support.system``: nats-server, PostgreSQL, moto and every service as its
own process, as ``make run`` starts them) with ``tests/soak/soak.toml`` (retention windows of
minutes), 10,000 simulated nodes reporting every 10 s, and a steady open-loop load of jobs that end
(``tests/soak/load.py``). At the start and every ``--every`` jobs it records a :class:`Sample`: RSS
of every process, JetStream store bytes (``/jsz``), ``pg_database_size``, and, killing placement,
gateway, teardown and metadata one at a time with SIGKILL and starting each again (same command
and environment, as the devstack supervisor restarts a service), the time until it answers
``$SRV.PING.<name>`` (the median of three tries each). At the end, once every job was decided and
released, the invariant checker runs over what the streams still hold (jobs whose ``job.submitted``
aged out are left out).

Writes ``bench-results/soak.md`` (the table), ``soak.png`` and ``soak.json`` (every sample, raw)
after each sample, so an interrupted run leaves what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import structlog
from nats.aio.client import Client

from schemas import events as ev
from services.devstack import _util
from services.runtime.config import load_config
from tests.soak.load import SoakLoad
from tests.soak.measure import RESTARTED, Sample, markdown, plot, system_rss
from tests.support.invariants import Report, check
from tests.support.replay import capacities, read_events, read_nodes, wait_for_nodes
from tests.support.servers import wait_for_services
from tests.support.system import SERVICES, System, system

log = structlog.get_logger("soak")

SOAK_TOML = Path(__file__).with_name("soak.toml")
OUT = Path("bench-results")
READY_TIMEOUT_S = 600.0
"""A restart not answering PING by then is shown as — in the table (the soak goes on)."""
RESTART_TRIES = 3
"""kill -9 and restart each service this many times per sample (round robin): the table shows the median."""


async def _pg_bytes(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


def _jsz(monitor_url: str) -> tuple[int, dict[str, int]]:
    """(the file store's bytes in use, bytes per stream) from the monitoring endpoint."""
    data = _util.http_json(f"{monitor_url}/jsz?accounts=true&streams=true", timeout=10.0) or {}
    streams: dict[str, int] = {}
    for account in data.get("account_details") or []:
        for st in account.get("stream_detail") or []:
            streams[st["name"]] = streams.get(st["name"], 0) + int(st.get("state", {}).get("bytes", 0))
    return int(data.get("storage", 0)), streams


async def restart_time(sysm: System, nc: Client, name: str) -> float | None:
    """kill -9 the service's newest instance, start it again, and time it until it answers PING."""
    t = time.perf_counter()
    sysm.procs[name][-1].kill()
    sysm.spawn(name)
    try:
        await wait_for_services(nc, [name], timeout=READY_TIMEOUT_S)
    except TimeoutError:
        log.error("not ready after a restart", service=name, timeout_s=READY_TIMEOUT_S)
        return None
    return round(time.perf_counter() - t, 2)


async def sample(sysm: System, nc: Client, load: SoakLoad, t0: float, last: Sample | None) -> Sample:
    now = time.perf_counter() - t0
    roots = [os.getpid(), *([sysm.pg.pid] if sysm.pg is not None and sysm.pg.pid else [])]
    rss = system_rss(roots)
    store, streams = await asyncio.to_thread(_jsz, sysm.nats.monitor_url)
    pg = await _pg_bytes(sysm.env["DATABASE_URL"]) if "DATABASE_URL" in sysm.env else 0
    jobs = load.submitted
    dt = now - (last.elapsed_s if last else 0.0)
    rate = (jobs - (last.jobs if last else 0)) / dt if dt > 0 else 0.0
    tries: dict[str, list[float | None]] = {}
    for _ in range(RESTART_TRIES):
        for n in RESTARTED:
            if n in sysm.procs:
                tries.setdefault(n, []).append(await restart_time(sysm, nc, n))
    restarts = {n: median_try(xs) for n, xs in tries.items()}
    report = await stream_check(nc)
    if not report.ok:
        log.error("invariants violated", violations={k: v[:5] for k, v in report.violations.items()})
    x = Sample(
        jobs=jobs,
        elapsed_s=round(now, 1),
        rate=round(rate, 1),
        rss_mb=rss,
        js_store_bytes=store,
        stream_bytes=streams,
        pg_bytes=pg,
        restart_s=restarts,
        restart_tries=tries,
        decided=load.decided,
        failed=load.failed,
        rejected=load.rejected,
        retries=load.retries,
        errors=load.errors,
        checked_jobs=report.jobs,
        violations={k: v[:20] for k, v in report.violations.items()},
    )
    log.info("sample", **{k: v for k, v in msgspec.structs.asdict(x).items() if k != "stream_bytes"})
    return x


def median_try(tries: list[float | None]) -> float | None:
    """The median of a service's restart tries, a try never ready (None) counting as the slowest."""
    ranked = sorted(tries, key=lambda x: float("inf") if x is None else x)
    return ranked[len(ranked) // 2] if ranked else None


def checkable(events: Iterable[ev.Event]) -> list[ev.Event]:
    """The events of jobs whose ``job.submitted`` is still in the streams (a job whose first events
    aged out cannot be checked from the rest of its history) and that are decided (one still in
    flight is not lost: the harness itself follows every submitted job to its decision)."""
    events = list(events)
    present = {e.job_id for e in events if isinstance(e, ev.JobSubmitted)}
    decided = {
        e.job_id
        for e in events
        if isinstance(e, ev.PlacementFailed | ev.JobRejected)
        or (isinstance(e, ev.PlacementDecided) and e.revision == 1)
    }
    keep = present & decided
    return [e for e in events if getattr(e, "job_id", None) in keep or not hasattr(e, "job_id")]


async def stream_check(nc: Client) -> Report:
    """The invariant checker over what the streams hold now (jobs may still run: releases are
    checked for double counting, not for presence; :meth:`SoakLoad.idle` waits for them at the end)."""
    js = nc.jetstream(timeout=30)
    events = checkable(await read_events(js))
    return check(events, capacities(await read_nodes(js)), require_release=False)


def write(samples: list[Sample], meta: dict[str, Any]) -> None:
    OUT.mkdir(exist_ok=True)
    preamble = (
        f"`make soak`: {meta['nodes']:,} simulated nodes reporting every {meta['sim_interval_s']:g} s, "
        f"open-loop load offered at {meta['rate']:g} jobs/s (1-3 replicas, max_runtime_s 5-60 s, a tenth "
        "cancelled and a tenth completed), retention windows of tests/soak/soak.toml (events "
        f"{meta['events_max_age_s']:g} s, ended jobs in memory {meta['ended_keep_s']:g} s, snapshots every "
        f"{meta['snapshot_every_s']:g} s). One row per {meta['every']:,} jobs; RSS now (PostgreSQL: all "
        "backends summed); ready = answers $SRV.PING.<name> after kill -9 and a restart, under load."
    )
    if "invariants" in meta:
        preamble += f"\n\nInvariant checker at the end: {meta['invariants']}"
    (OUT / "soak.md").write_text(markdown(samples, preamble) + "\n")
    raw = {**meta, "samples": [msgspec.structs.asdict(x) for x in samples]}
    (OUT / "soak.json").write_bytes(msgspec.json.format(msgspec.json.encode(raw)))
    plot(samples, OUT / "soak.png")


async def run(jobs: int, rate: float, every: int, nodes: int, sim_interval: float) -> int:
    conf = load_config(SOAK_TOML)
    ret = conf.retention
    meta: dict[str, Any] = {
        "jobs": jobs,
        "rate": rate,
        "every": every,
        "nodes": nodes,
        "sim_interval_s": sim_interval,
        "events_max_age_s": ret.events_max_age_s,
        "ended_keep_s": ret.ended_keep_s,
        "snapshot_every_s": ret.snapshot_every_s,
        "cpus": os.cpu_count(),
    }
    samples: list[Sample] = []
    env = {"SCHEDULER_CONFIG": str(SOAK_TOML)}
    async with system(SERVICES, sim_nodes=nodes, sim_interval=sim_interval, env=env) as (sysm, nc):
        await wait_for_nodes(nc.jetstream(timeout=30), nodes, timeout=300)
        load = SoakLoad(nc, rate=rate, total=jobs)
        await load.start()
        t0 = time.perf_counter()
        samples.append(await sample(sysm, nc, load, t0, None))
        write(samples, meta)
        running = asyncio.create_task(load.run())
        for k in range(every, jobs + 1, every):
            reached = asyncio.create_task(load.milestone(k).wait())
            await asyncio.wait({reached, running}, return_when=asyncio.FIRST_COMPLETED)
            if not reached.done():  # the load ended short of k (submits given up)
                reached.cancel()
                break
            samples.append(await sample(sysm, nc, load, t0, samples[-1]))
            write(samples, meta)
        await running
        meta["elapsed_s"] = round(time.perf_counter() - t0, 1)
        meta["mean_rate"] = round(load.submitted / (time.perf_counter() - t0), 1)
        meta["behind"] = load.behind
        meta["error_codes"] = dict(load.error_codes)
        decided = await load.settled(300.0)
        report = await stream_check(nc)
        idle = await load.idle(2 * 60.0 + 30.0)
        meta["settled"], meta["idle"] = decided, idle
        meta["unreleased"] = sorted(load.live)[:20]
        meta["report"] = msgspec.structs.asdict(report)
        verdict = "green" if report.ok else f"RED {report.violations}"
        meta["undecided"] = len(load.undecided)
        meta["invariants"] = (
            f"{verdict} over the {report.jobs:,} decided jobs whose history the streams still hold "
            f"(every submitted job decided within 300 s after the load: {decided}"
            f"{'' if decided else f', {len(load.undecided)} not'}; every placed job released within "
            f"150 s after that: {idle}{'' if idle else f', {len(load.live)} not'}). The same check ran at every row "
            "(column `checked / violations`)."
        )
        write(samples, meta)
    sys.stdout.write((OUT / "soak.md").read_text())
    ok = all(not x.violations for x in samples) and report.ok
    return 0 if ok and decided and idle and load.errors == 0 else 1


def redraw() -> None:
    """Rewrite soak.md and soak.png from soak.json (e.g. after a change of the table's layout)."""
    raw = msgspec.json.decode((OUT / "soak.json").read_bytes())
    samples = msgspec.convert(raw.pop("samples"), list[Sample])
    write(samples, raw)


def main() -> int:
    if sys.argv[1:] == ["--redraw"]:
        redraw()
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=1_000_000, help="jobs to submit in all (default 1,000,000)")
    p.add_argument("--rate", type=float, default=300.0, help="jobs/s offered, open loop (default 300)")
    p.add_argument("--every", type=int, default=100_000, help="a sample every this many jobs (default 100,000)")
    p.add_argument("--nodes", type=int, default=10_000, help="simulated nodes (default 10,000)")
    p.add_argument("--sim-interval", type=float, default=10.0, help="each node reports every S s (default 10)")
    a = p.parse_args()
    if min(a.jobs, a.every, a.nodes) < 1 or a.rate <= 0 or a.sim_interval <= 0:
        p.error("--jobs, --every, --nodes, --rate and --sim-interval must be positive")
    # SIGTERM as Ctrl-C: the run unwinds and stops every process it started (the default handler
    # would leave them running, orphaned)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return asyncio.run(run(a.jobs, a.rate, a.every, a.nodes, a.sim_interval))


if __name__ == "__main__":
    sys.exit(main())
