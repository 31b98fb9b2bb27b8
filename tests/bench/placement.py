"""Placement micro-benchmark: one decision over 1k/10k/100k nodes, and node-status absorption.

The fleet is heterogeneous: five machine sizes (4-64 cores, 4 GiB per core), 5% with
gpus, three zones, one to three technologies, free capacity anywhere between idle and
full. 20% of the nodes cannot take the benchmark job: 10% lack docker, 5% have less
than 2 free cpu, 5% less than 4 GiB free memory. The job is 3 replicas of 2 cpu and
4 GiB on docker. Between two timed decisions a few random statuses are applied (not
timed), so the index keeps changing as it would in service.
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from schemas import events as ev
from schemas.jobs import Constraints, JobSpec, Resources, Workload
from services.placement.engine import Placed, place
from services.placement.nodes import absorb
from services.placement.state import World

TTL = 15.0
SIZES = (4, 8, 16, 32, 64)
SEED = 42


def _status(rng: random.Random, i: int, at: datetime) -> ev.NodeStatus:
    cores = rng.choice(SIZES)
    mem = cores * 4096
    kind = i % 20  # 0-1: no docker, 2: little cpu, 3: little memory, else fits
    techs = ["docker", *rng.sample(["unikernel", "wasm", "vm"], rng.randint(0, 2))] if kind >= 2 else ["vm"]
    cpu_free = rng.choice([0.0, 0.5, 1.0, 1.5]) if kind == 2 else float(rng.randint(4, 2 * cores)) / 2
    mem_free = rng.randint(0, 4095) if kind == 3 else rng.randint(4, mem // 1024) * 1024
    return ev.NodeStatus(
        node_id=f"node-{i:06d}",
        at=at,
        state="active",
        technologies=techs,
        cpu_cores=float(cores),
        cpu_free=max(2.0, cpu_free) if kind > 3 else cpu_free,
        memory_mb=mem,
        memory_free_mb=min(mem, max(4096, mem_free)) if kind > 3 else min(mem, mem_free),
        gpus=rng.choice([1, 2, 4]) if rng.random() < 0.05 else 0,
        labels={"zone": f"eu-central-1{'abc'[i % 3]}", "rack": f"r{i % 40}"},
    )


def _update(rng: random.Random, statuses: list[ev.NodeStatus], at: datetime) -> ev.NodeStatus:
    """A later status of a random node: same machine, new free capacity (unfit nodes stay unfit)."""
    i = rng.randrange(len(statuses))
    new = _status(rng, i, at)
    old = statuses[i]
    st = msgspec.structs.replace(
        old,
        at=at,
        cpu_free=min(old.cpu_cores, new.cpu_free),
        memory_free_mb=min(old.memory_mb, new.memory_free_mb),
    )
    statuses[i] = st
    return st


def _job(strategy: str = "best_fit", **constraints: Any) -> JobSpec:
    return JobSpec(
        name="bench",
        technology="docker",
        replicas=3,
        resources=Resources(cpu=2.0, memory_mb=4096),
        constraints=Constraints(**constraints),
        cluster="shared",
        workload=Workload(),
        strategy=strategy,  # type: ignore[arg-type]
    )


def _fleet(n: int, rng: random.Random) -> tuple[World, list[ev.NodeStatus]]:
    at = datetime.now(UTC)
    statuses = [_status(rng, i, at) for i in range(n)]
    w = World()
    now = time.monotonic()
    for st in statuses:
        w.update_node(st, now)
    return w, statuses


def _decisions(w: World, statuses: list[ev.NodeStatus], rng: random.Random, spec: JobSpec, k: int) -> list[float]:
    at = datetime.now(UTC)
    samples = []
    for _ in range(k):
        for _ in range(5):
            w.update_node(_update(rng, statuses, at), time.monotonic())
        now = time.monotonic()
        t0 = time.perf_counter_ns()
        r = place(spec, w, now, TTL)
        samples.append((time.perf_counter_ns() - t0) / 1000)
        assert isinstance(r, Placed)
    return samples


def _stats(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100)
    return {"median_us": round(statistics.median(samples), 1), "p99_us": round(q[98], 1), "n": len(samples)}


async def run() -> dict[str, Any]:
    rng = random.Random(SEED)
    out: dict[str, Any] = {"decision": {}, "strategies_10k": {}, "absorption_10k": {}}
    for n in (1_000, 10_000, 100_000):
        w, statuses = _fleet(n, rng)
        _decisions(w, statuses, rng, _job(), 200)  # warm-up
        out["decision"][str(n)] = _stats(_decisions(w, statuses, rng, _job(), 3000))
        if n == 10_000:
            for name, spec in {
                "spread": _job("spread"),
                "first_fit": _job("first_fit"),
                "pack": _job("pack"),
                "best_fit, label zone": _job(labels={"zone": "eu-central-1b"}),
                "best_fit, constraints.spread": _job(spread=True),
            }.items():
                out["strategies_10k"][name] = _stats(_decisions(w, statuses, rng, spec, 1000))
            # absorption: decode + staleness check + index update, changing free values each time
            at = datetime.now(UTC)
            raw = [ev.encode(_update(rng, statuses, at)) for _ in range(100_000)]
            wall = datetime.now(UTC)
            t0 = time.perf_counter()
            for data in raw:
                absorb(w, data, wall, time.monotonic(), TTL)
            dt = time.perf_counter() - t0
            out["absorption_10k"] = {"updates": len(raw), "seconds": round(dt, 3), "per_s": int(len(raw) / dt)}
    return out


def markdown(result: dict[str, Any]) -> str:
    rows = [
        "### Placement",
        "",
        "One decision (`engine.place`) for a 3-replica job (2 cpu, 4 GiB each), best_fit, 20% of nodes unfit:",
        "",
        "| nodes | median µs | p99 µs | samples |",
        "|---:|---:|---:|---:|",
    ]
    for n, s in result["decision"].items():
        rows.append(f"| {int(n):,} | {s['median_us']} | {s['p99_us']} | {s['n']} |")
    rows += [
        "",
        "Other strategies and constraints at 10,000 nodes:",
        "",
        "| job | median µs | p99 µs |",
        "|---|---:|---:|",
    ]
    for name, s in result["strategies_10k"].items():
        rows.append(f"| {name} | {s['median_us']} | {s['p99_us']} |")
    a = result["absorption_10k"]
    rows += ["", f"Node-status absorption at 10,000 nodes (decode + stale check + re-index): {a['per_s']:,} updates/s"]
    return "\n".join(rows)
