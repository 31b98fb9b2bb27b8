"""``python -m tests.chaos [scenario ...]``: fault scenarios under load, each ending with the
invariant checker; prints a table (scenario, jobs submitted, faults, lost, duplicates,
overbooked nodes, time to recover) and writes it to bench-results/chaos.md."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from schemas import subjects as s
from schemas.events import DeadLetter
from tests.chaos.load import Load
from tests.support.invariants import check_live, read_stream
from tests.support.procs import present
from tests.support.servers import wait_for_services
from tests.support.system import SERVICES, System, system

LOAD_S = float(os.environ.get("CHAOS_LOAD_S", "20"))
RATE = float(os.environ.get("CHAOS_RATE", "25"))
NODES = int(os.environ.get("CHAOS_NODES", "200"))

Fault = Callable[[System, Client], Awaitable[int]]


async def _settle(load: Load, js: Any, timeout: float = 90.0) -> float:
    """Wait until every submitted job is decided and every cancelled placed job released,
    as the streams say (a client's reply can be lost in a fault); returns how long it took."""
    t0 = time.perf_counter()
    want = set(load.submitted.values())
    decisions = (s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.JOB_REJECTED)
    while time.perf_counter() - t0 < timeout:
        events = [e for st in (s.JOBS.name, s.PLACEMENTS.name) for e in await read_stream(js, st)]
        tags = [(e.__struct_config__.tag, getattr(e, "job_id", "")) for e in events]
        load.decided |= {j for t, j in tags if t in decisions}
        placed = {j for t, j in tags if t == s.PLACEMENT_DECIDED}
        cancelled = {j for t, j in tags if t == s.JOB_CANCEL_REQUESTED}
        released = {j for t, j in tags if t == s.PLACEMENT_RELEASED}
        if want <= load.decided and (cancelled & placed) <= released:
            break
        await asyncio.sleep(0.5)
    return time.perf_counter() - t0


async def kill9_each(sysm: System, nc: Client) -> int:
    faults = 0
    for name in [n for n in SERVICES if n in sysm.procs]:
        victim = sysm.procs[name][-1]
        victim.kill()
        faults += 1
        await asyncio.sleep(LOAD_S / (2 * len(sysm.procs)))
        sysm.spawn(name)
    return faults


async def twins_one_killed(sysm: System, nc: Client) -> int:
    faults = 0
    await asyncio.sleep(LOAD_S / 3)
    for name in ("intake", "metadata", "provisioner"):
        if name in sysm.procs and len(sysm.procs[name]) > 1:
            sysm.procs[name][0].kill()
            faults += 1
    return faults


async def nats_restart(sysm: System, nc: Client) -> int:
    await asyncio.sleep(LOAD_S / 3)
    sysm.nats.kill()
    await asyncio.sleep(2)
    sysm.nats.start()
    return 1


async def postgres_restart(sysm: System, nc: Client) -> int:
    if sysm.pg is None:
        return 0
    await asyncio.sleep(LOAD_S / 3)
    sysm.pg.stop()
    await asyncio.sleep(5)
    sysm.pg.start()
    return 1


async def poison(sysm: System, nc: Client) -> int:
    js = nc.jetstream()
    await asyncio.sleep(LOAD_S / 4)
    n = 0
    for subject in (s.JOB_SUBMITTED, s.JOB_ACCEPTED, s.PLACEMENT_DECIDED, s.CLUSTER_PROVISIONED, s.JOB_COMPLETED):
        await js.publish(s.commit_subject(subject), b"\x00not json", headers={"Nats-Msg-Id": f"poison-bytes-{subject}"})
        await js.publish(
            s.commit_subject(subject),
            b'{"type": "job.expired", "event_id": "x", "job_id": "poison"}',
            headers={"Nats-Msg-Id": f"poison-type-{subject}"},
        )
        n += 2
    return n


async def cluster_leader_killed(sysm: System, nc: Client) -> int:
    """3-node cluster, R3 streams: SIGKILL the server leading JOBS mid-load, restart it after a while."""
    await asyncio.sleep(LOAD_S / 3)
    info = await nc.jetstream(timeout=5).stream_info(s.JOBS.name)
    leader = info.cluster.leader if info.cluster else None
    victim = sysm.server_named(leader) if leader else sysm.servers[0]
    sys.stderr.write(f"   killing {leader or 'server 1'} (JOBS leader), pid {victim.pid}\n")
    victim.kill()
    await asyncio.sleep(max(3.0, LOAD_S / 4))
    victim.start()
    sys.stderr.write("   restarted it\n")
    return 1


CLUSTER_SCENARIO = "3-node NATS cluster, JOBS leader killed and restarted"

SCENARIOS: dict[str, tuple[Fault, dict[str, int]]] = {
    "kill -9 each service": (kill9_each, {}),
    "two instances, one killed": (twins_one_killed, {"intake": 2, "metadata": 2, "provisioner": 2}),
    "nats-server killed and restarted": (nats_restart, {}),
    "PostgreSQL stopped and restarted": (postgres_restart, {}),
    "poison messages on every stream": (poison, {}),
    CLUSTER_SCENARIO: (cluster_leader_killed, {}),
}
NATS_SERVERS: dict[str, int] = {CLUSTER_SCENARIO: 3}
"""Scenarios run against a NATS cluster of this size (streams with as many replicas)."""


async def run_scenario(name: str, fault: Fault, instances: dict[str, int]) -> dict[str, Any]:
    async with system(
        SERVICES,
        instances=instances,
        sim_nodes=NODES,
        sim_interval=3.0,
        env={"LOG_LEVEL": "info"},
        nats_servers=NATS_SERVERS.get(name, 1),
    ) as (sysm, nc):
        load = Load(nc, rate=RATE)
        await load.start()
        t = time.perf_counter()
        load_task = asyncio.create_task(load.run(LOAD_S))
        faults = await fault(sysm, nc)
        fault_done = time.perf_counter()
        await load_task
        await load.cancels_done()
        await wait_for_services(nc, [n for n in SERVICES if present(n)], timeout=60)
        recover = await _settle(load, nc.jetstream())
        report = await check_live(nc.jetstream(), submitted_ids=load.submitted.values(), require_release=True)
        letters = [e for e in await read_stream(nc.jetstream(), s.DEADLETTERS.name) if isinstance(e, DeadLetter)]
        keys = [(d.service, d.stream, d.stream_seq) for d in letters]
        repeated_letters = len(keys) - len(set(keys))
        return {
            "scenario": name,
            "jobs": len(load.submitted),
            "faults": faults,
            "lost": len(report.lost) + len(report.missing_from_stream),
            "duplicates": len(report.duplicate_keys)
            + len(report.multiply_decided)
            + len(report.double_released)
            + repeated_letters,
            "overbooked": len(report.overbooked),
            "unreleased": len(report.unreleased),
            "instances_left": len(report.instances_left),
            "deadletters": len(letters),
            "client_retries": load.retries,
            "recover_s": round(max(0.0, time.perf_counter() - fault_done - (LOAD_S - (fault_done - t))), 1)
            if recover
            else 0.0,
            "settle_s": round(recover, 1),
            "ok": report.ok and not repeated_letters,
            "_report": report,
        }


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        f"Load: {RATE:g} jobs/s for {LOAD_S:g} s per scenario, {NODES} simulated nodes, every 5th placed job "
        "cancelled.",
        "",
        "| scenario | jobs submitted | faults injected | jobs lost | duplicates | overbooked nodes | unreleased "
        "| instances left | dead letters | time to settle (s) | invariants |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['scenario']} | {r['jobs']} | {r['faults']} | {r['lost']} | {r['duplicates']} | "
            f"{r['overbooked']} | {r['unreleased']} | {r['instances_left']} | {r['deadletters']} | "
            f"{r['settle_s']} | {'green' if r['ok'] else 'RED'} |"
        )
    return "\n".join(out)


async def main(names: list[str]) -> int:
    rows = []
    for name, (fault, inst) in SCENARIOS.items():
        if names and not any(n.lower() in name.lower() for n in names):
            continue
        sys.stderr.write(f"== {name} ==\n")
        row = await run_scenario(name, fault, inst)
        if not row["ok"]:
            sys.stderr.write(f"   violations: {row['_report']}\n")
        rows.append(row)
    md = markdown(rows)
    Path("bench-results").mkdir(exist_ok=True)
    Path("bench-results/chaos.md").write_text(md + "\n")
    sys.stdout.write(md + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
