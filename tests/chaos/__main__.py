"""``python -m tests.chaos [scenario ...]``: fault scenarios under load, each ending with the
invariant checker; prints a table (scenario, jobs submitted, faults, lost, duplicates,
overbooked nodes, time to recover) and writes it to bench-results/chaos.md."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from schemas import subjects as s
from schemas.events import DeadLetter
from tests.chaos import living, preemption, scaling, snapshots, tenants
from tests.chaos.living import Injected
from tests.chaos.load import Load
from tests.support.invariants import check_live, read_stream
from tests.support.procs import present
from tests.support.replay import wait_for_nodes
from tests.support.servers import wait_for_services
from tests.support.system import SERVICES, System, system

LOAD_S = float(os.environ.get("CHAOS_LOAD_S", "20"))
RATE = float(os.environ.get("CHAOS_RATE", "25"))
NODES = int(os.environ.get("CHAOS_NODES", "200"))
LIVING_NODES = int(os.environ.get("CHAOS_LIVING_NODES", "1000"))

Fault = Callable[[System, Client, Load], Awaitable[Injected]]


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


async def kill9_each(sysm: System, nc: Client, load: Load) -> Injected:
    faults = 0
    for name in [n for n in SERVICES if n in sysm.procs]:
        victim = sysm.procs[name][-1]
        victim.kill()
        faults += 1
        await asyncio.sleep(LOAD_S / (2 * len(sysm.procs)))
        sysm.spawn(name)
    return Injected(faults)


async def twins_one_killed(sysm: System, nc: Client, load: Load) -> Injected:
    faults = 0
    await asyncio.sleep(LOAD_S / 3)
    for name in ("intake", "metadata", "provisioner"):
        if name in sysm.procs and len(sysm.procs[name]) > 1:
            sysm.procs[name][0].kill()
            faults += 1
    return Injected(faults)


async def _outage(stop: Callable[[], object], start: Callable[[], object], down_s: float) -> Injected:
    """A third into the load, ``stop`` a server, and ``start`` it again ``down_s`` later."""
    await asyncio.sleep(LOAD_S / 3)
    stop()
    await asyncio.sleep(down_s)
    start()
    return Injected(1)


async def nats_restart(sysm: System, nc: Client, load: Load) -> Injected:
    return await _outage(sysm.nats.kill, sysm.nats.start, 2)


async def postgres_restart(sysm: System, nc: Client, load: Load) -> Injected:
    return Injected(0) if sysm.pg is None else await _outage(sysm.pg.stop, sysm.pg.start, 5)


async def poison(sysm: System, nc: Client, load: Load) -> Injected:
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
    return Injected(n)


async def cluster_leader_killed(sysm: System, nc: Client, load: Load) -> Injected:
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
    return Injected(1)


def _living(fault: Callable[[System, Client, Load, float], Awaitable[Injected]]) -> Fault:
    async def inject(sysm: System, nc: Client, load: Load) -> Injected:
        return await fault(sysm, nc, load, LOAD_S / 3)

    return inject


@dataclass(frozen=True)
class Scenario:
    fault: Fault
    instances: Mapping[str, int] = field(default_factory=dict)
    nats_servers: int = 1
    living: bool = False
    """A living-fleet row (§8.2): short node timeouts, the fleet in five parts, 2-replica jobs,
    and the end state checked for settling (``living.settle``)."""
    nodes: int | None = None
    """The fleet's size when not the default (``NODES``, ``LIVING_NODES``)."""
    preempts: bool = False
    settings: Mapping[str, float] | None = None
    """Settings of ``defaults.toml`` for this row (living-fleet rows: ``living.SETTINGS``)."""
    """The row is red unless some replica was preempted (else it proved nothing about preemption)."""


CLUSTER_SCENARIO = "3-node NATS cluster, JOBS leader killed and restarted"

SCENARIOS: dict[str, Scenario] = {
    "kill -9 each service": Scenario(kill9_each),
    "two instances, one killed": Scenario(twins_one_killed, {"intake": 2, "metadata": 2, "provisioner": 2}),
    "nats-server killed and restarted": Scenario(nats_restart),
    "PostgreSQL stopped and restarted": Scenario(postgres_restart),
    "poison messages on every stream": Scenario(poison),
    CLUSTER_SCENARIO: Scenario(cluster_leader_killed, nats_servers=3),
    "20% of node agents killed at once": Scenario(_living(living.kill_fifth_of_agents), living=True),
    "10 nodes drained under load": Scenario(_living(living.drain_ten), living=True),
    "2 dedicated instances stopped in EC2": Scenario(_living(living.stop_two_instances), living=True),
    "job.scale in flight, placement and provisioner killed -9": Scenario(
        _living(scaling.scale_under_kills), living=True
    ),
    "placement killed -9 during preemptions": Scenario(
        _living(preemption.preempt_under_kills), living=True, nodes=preemption.NODES, preempts=True
    ),
    "two tenants under load, one at its quota; placement and metadata killed -9": Scenario(
        _living(tenants.tenants_under_kills)  # the first-wave fleet; kills a third into the load
    ),
    "placement killed -9 right after a snapshot and mid-snapshot": Scenario(
        _living(snapshots.kill_around_snapshots), settings=snapshots.SETTINGS
    ),
}


async def run_scenario(name: str, sc: Scenario) -> dict[str, Any]:
    nodes = sc.nodes or (LIVING_NODES if sc.living else NODES)
    async with system(
        SERVICES,
        instances=sc.instances,
        sim_nodes=nodes,
        sim_interval=living.SIM_INTERVAL if sc.living else 3.0,
        env={"LOG_LEVEL": "info"},
        nats_servers=sc.nats_servers,
        sim_fleets=living.FLEETS if sc.living else 1,
        settings=sc.settings or (living.SETTINGS if sc.living else None),
    ) as (sysm, nc):
        load = Load(nc, rate=RATE, replicas=2 if sc.living else 1)
        if sc.living:
            load.pinned = living.pinned_nodes(nodes)
            await wait_for_nodes(nc.jetstream(), nodes)  # every fleet process is up before the fault
        await load.start()
        t = time.perf_counter()
        load_task = asyncio.create_task(load.run(LOAD_S))
        injected = await sc.fault(sysm, nc, load)
        fault_done = time.perf_counter()
        ec2 = sysm.moto.endpoint_url if sysm.moto else None
        settling = (
            asyncio.create_task(living.settle(nc, injected.effect_at, ec2_endpoint=ec2, decide=injected.decide))
            if injected.effect_at
            else None
        )
        await load_task
        await load.cancels_done()
        await wait_for_services(nc, [n for n in SERVICES if present(n)], timeout=60)
        recover = await _settle(load, nc.jetstream())
        settled_s, _ = await settling if settling else (None, None)
        report = await check_live(
            nc.jetstream(),
            submitted_ids=load.submitted.values(),
            require_release=True,
            node_lost_s=living.LOST_S if sc.living else None,
            ec2_endpoint=ec2 if sc.living else None,
        )
        letters = [e for e in await read_stream(nc.jetstream(), s.DEADLETTERS.name) if isinstance(e, DeadLetter)]
        keys = [(d.service, d.stream, d.stream_seq) for d in letters]
        repeated_letters = len(keys) - len(set(keys))
        return {
            "scenario": name,
            "nodes": nodes,
            "jobs": len(load.submitted),
            "faults": injected.faults,
            "lost": len(report.lost) + len(report.missing_from_stream),
            "duplicates": len(report.duplicate_keys)
            + len(report.multiply_decided)
            + len(report.double_released)
            + repeated_letters,
            "overbooked": len(report.overbooked),
            "unreleased": len(report.unreleased),
            "instances_left": len(report.instances_left),
            "deadletters": len(letters),
            "revisions": report.revisions,
            "instances_replaced": report.instances_replaced,
            "degraded": report.degraded,
            "preempted": report.preempted,
            "client_retries": load.retries,
            "recover_s": round(max(0.0, time.perf_counter() - fault_done - (LOAD_S - (fault_done - t))), 1)
            if recover
            else 0.0,
            "settle_s": (round(settled_s, 1) if settled_s is not None else "never")
            if injected.effect_at
            else round(recover, 1),
            "error": injected.error or ("nothing was preempted" if sc.preempts and not report.preempted else None),
            "ok": report.ok
            and not repeated_letters
            and not injected.error
            and (report.preempted > 0 or not sc.preempts)
            and (settled_s is not None or not settling),
            "_report": report,
        }


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        f"Load: {RATE:g} jobs/s for {LOAD_S:g} s per scenario, every 5th placed job cancelled; "
        f"{NODES} simulated nodes, 1-replica jobs (living-fleet rows: {LIVING_NODES} nodes in {living.FLEETS} "
        f"fleet processes reporting every {living.SIM_INTERVAL:g} s, 2-replica jobs, every 10th pinned to 3 nodes "
        f"of the first fleet, node_lost_s {living.LOST_S:g}). Time to settle: until every decision is stored; for "
        "the living-fleet rows, from the fault's effect (the loss detected: node_lost_s after the last status; "
        "the last drain reply; the EC2 stop; the last kill and cancel of the resize row; the last restart of "
        f"placement in the preemption row, whose fleet is {preemption.NODES} nodes filled with low-priority 2-cpu "
        "jobs before 8-cpu jobs of priority 100-120 arrive) until the checker finds every live job whole on live, "
        "undrained nodes or degraded, with its latest job.scale in force, every dedicated job running one "
        "instance per replica of its latest revision, and (preemption row) every preempting job decided "
        "(polled every 0.25 s plus the time to read the streams; the end of the read that found it settled "
        "counts, an upper bound).",
        "",
        "| scenario | nodes | jobs submitted | faults injected | jobs lost | duplicates | overbooked nodes "
        "| unreleased | instances left | dead letters | revisions / instances replaced | degraded | time to settle (s) "
        "| invariants |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['scenario']} | {r.get('nodes', NODES)} | {r['jobs']} | {r['faults']} | {r['lost']} | "
            f"{r['duplicates']} | {r['overbooked']} | {r['unreleased']} | {r['instances_left']} | "
            f"{r['deadletters']} | {r.get('revisions', '')} / {r.get('instances_replaced', '')} | "
            f"{r.get('degraded', '')} | {r['settle_s']} | "
            f"{'green' if r['ok'] else 'RED'} |"
        )
    return "\n".join(out)


async def main(names: list[str]) -> int:
    """Run the scenarios whose names contain one of ``names`` (all without; ``living``: the
    living-fleet rows), and merge their
    rows into bench-results/chaos.json, so a partial run updates its rows of the table."""
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    store = out / "chaos.json"
    kept: dict[str, dict[str, Any]] = json.loads(store.read_text()) if store.exists() else {}
    ran = []
    for name, sc in SCENARIOS.items():
        if names and not any(n.lower() in name.lower() for n in names) and not ("living" in names and sc.living):
            continue
        sys.stderr.write(f"== {name} ==\n")
        row = await run_scenario(name, sc)
        report = row.pop("_report")
        if row["preempted"]:
            sys.stderr.write(f"   {row['preempted']} replica(s) preempted\n")
        if not row["ok"]:
            sys.stderr.write(f"   violations: {report.violations} {row['error'] or ''}\n")
        kept[name] = row
        ran.append(row)
        store.write_text(json.dumps(kept, indent=2))
    md = markdown([kept[n] for n in SCENARIOS if n in kept])
    (out / "chaos.md").write_text(md + "\n")
    sys.stdout.write(markdown(ran) + "\n")
    return 0 if all(r["ok"] for r in ran) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
