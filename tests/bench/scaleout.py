"""Scale-out benchmark: 1, 2 and 4 placement instances against a 3-node NATS cluster (R3 streams).

For each instance count N a fresh system is started (``system(..., nats_servers=3)``): the
cluster, gateway, intake, N placement processes and a simulated fleet. Jobs are submitted
open-loop at a fixed rate, then closed-loop; latency is ``job.submit`` sent (open loop: due)
→ the job's decision received, as in ``tests/bench/pipeline.py``. At the end of each N the
invariant checker reads the streams (overbooked nodes must be 0, every job decided once),
and after the processes stopped, each placement instance's ``placement stats`` log line
(``{"decisions", "commits", "conflicts"}``) gives the conflict rate
``conflicts / (decisions + conflicts)`` summed over the instances.

Knobs (environment): BENCH_SCALEOUT_NODES (2000), BENCH_SCALEOUT_INSTANCES ("1,2,4"),
BENCH_SCALEOUT_RATE (open loop, jobs/s offered; 150), BENCH_SCALEOUT_OPEN_S (12),
BENCH_SCALEOUT_CLOSED_S (12), BENCH_SCALEOUT_CLIENTS (closed loop; 32).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from services.devstack import ServiceProcess
from tests.bench.pipeline import Collector, closed_loop, open_loop, warm_up
from tests.support.invariants import check_live
from tests.support.system import System, system

NODES = int(os.environ.get("BENCH_SCALEOUT_NODES", "2000"))
INSTANCES = [int(n) for n in os.environ.get("BENCH_SCALEOUT_INSTANCES", "1,2,4").split(",")]
RATE = int(os.environ.get("BENCH_SCALEOUT_RATE", "150"))
OPEN_S = float(os.environ.get("BENCH_SCALEOUT_OPEN_S", "12"))
CLOSED_S = float(os.environ.get("BENCH_SCALEOUT_CLOSED_S", "12"))
CLIENTS = int(os.environ.get("BENCH_SCALEOUT_CLIENTS", "32"))
SERVICES = ["gateway", "intake", "placement"]
STATS_EVENT = "placement stats"


async def wait_instances(nc: Client, name: str, count: int, timeout: float = 60) -> None:
    """Until ``count`` distinct instances of ``name`` answer ``$SRV.PING.<name>``."""
    seen: set[str] = set()

    async def on_pong(msg: Msg) -> None:
        seen.add(json.loads(msg.data)["id"])

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_pong)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while len(seen) < count:
            if loop.time() > deadline:
                raise TimeoutError(f"only {len(seen)} of {count} {name} instances answered")
            await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
            await asyncio.sleep(0.3)
    finally:
        await sub.unsubscribe()


def placement_stats(procs: list[ServiceProcess]) -> list[dict[str, int]]:
    """The ``placement stats`` line each (stopped) placement process wrote to its JSON log."""
    out: list[dict[str, int]] = []
    for p in procs:
        for line in reversed(p.log_text().splitlines()):
            if STATS_EVENT not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == STATS_EVENT:
                out.append({k: int(rec.get(k, 0)) for k in ("decisions", "commits", "conflicts")})
                break
    return out


def _cpu(sysm: System, prefix: str) -> float:
    return sum(v["cpu_s"] for k, v in sysm.usage().items() if k.startswith(prefix))


async def one(n: int) -> dict[str, Any]:
    async with system(
        SERVICES,
        instances={"placement": n},
        sim_nodes=NODES,
        sim_interval=5.0,
        with_postgres=False,
        with_moto=False,
        service_env={"placement": {"LOG_LEVEL": "info"}},  # the stats line is at info
        nats_servers=3,
    ) as (sysm, nc):
        await wait_instances(nc, "placement", n)
        col = Collector()
        await col.subscribe(nc)
        await warm_up(nc, col)
        cpu0 = _cpu(sysm, "placement#")
        opened = await open_loop(nc, col, RATE, OPEN_S)
        opened.pop("_lat", None)
        closed = await closed_loop(nc, col, CLIENTS, CLOSED_S)
        cpu = round(_cpu(sysm, "placement#") - cpu0, 1)
        report = await check_live(nc.jetstream(timeout=10), require_release=False)
        procs = list(sysm.procs["placement"])
    stats = placement_stats(procs)  # written at graceful shutdown, i.e. once system() stopped them
    decisions = sum(x["decisions"] for x in stats)
    conflicts = sum(x["conflicts"] for x in stats)
    commits = sum(x["commits"] for x in stats)
    return {
        "instances": n,
        "open": opened,
        "closed": closed,
        "decisions": decisions,
        "commits": commits,
        "conflicts": conflicts,
        "conflict_rate": round(conflicts / (decisions + conflicts), 4) if decisions + conflicts else 0.0,
        "stats_lines": len(stats),
        "per_instance": stats,
        "placement_cpu_s": cpu,
        "jobs_checked": report.jobs,
        "overbooked": len(report.overbooked),
        "multiply_decided": len(report.multiply_decided),
        "lost": len(report.lost),
        "invariants_ok": report.ok,
    }


async def run() -> dict[str, Any]:
    return {
        "nodes": NODES,
        "nats": "3-node cluster, R3 streams",
        "rate": RATE,
        "open_s": OPEN_S,
        "closed_s": CLOSED_S,
        "clients": CLIENTS,
        "runs": [await one(n) for n in INSTANCES],
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"### Placement scale-out ({r['nodes']} simulated nodes, {r['nats']}; gateway + intake + N placement)",
        "",
        f"Open loop: {r['rate']} jobs/s offered for {r['open_s']:g} s; closed loop: {r['clients']} clients for "
        f"{r['closed_s']:g} s. Conflict rate = conflicts / (decisions + conflicts), summed over the instances.",
        "",
        "| placement instances | open jobs/s | open p50 ms | open p99 ms | open errors | closed jobs/s "
        "| closed p50 ms | closed p99 ms | closed errors | decisions | commits | conflicts | conflict rate "
        "| placement CPU s | overbooked nodes | invariants |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        o, c = x["open"], x["closed"]
        lines.append(
            f"| {x['instances']} | {o['jobs_per_s']} | {o['p50_ms']} | {o['p99_ms']} | {o['errors']} | "
            f"{c['jobs_per_s']} | {c['p50_ms']} | {c['p99_ms']} | {c['errors']} | {x['decisions']} | "
            f"{x['commits']} | {x['conflicts']} | {x['conflict_rate']:.2%} | {x['placement_cpu_s']} | "
            f"{x['overbooked']} | {'green' if x['invariants_ok'] else 'RED'} |"
        )
    missing = [x["instances"] for x in r["runs"] if x["stats_lines"] != x["instances"]]
    if missing:
        lines += ["", f"Note: some placement instances wrote no stats line (N = {missing})."]
    return "\n".join(lines)
