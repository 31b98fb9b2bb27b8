"""Placement policies micro-benchmark (engine level, like ``placement``): one decision at
10,000 and 100,000 nodes for

(a) 3 replicas with ``constraints.spread_by: zone`` over 10 zones;
(b) ``constraints.near`` with a 500 km radius (best_fit; and ``nearest`` beside it);
(c) a high-priority job (1 replica of 4 cpu / 8 GiB) on a full fleet that must preempt: the
    failed try, the victim search, the preemptor's placement and the victims' re-placement
    tries with their ``placement.degraded`` explanation (a census), all as the decider does it;
    undone after each sample (not timed) so the fleet stays full.

Fleet: 10 zones across Europe, 3 cities per zone, nodes within ~15 km of their city; sizes
4-64 cores (4 GiB per core), free capacity anywhere between idle and full; a few random status
updates between samples. Full fleet for (c): every node filled by two jobs of priority 0-9
(2 cpu / 4 GiB replicas).
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from schemas import events as ev
from schemas.jobs import Constraints, JobSpec, Near, Resources, Workload
from services.placement import preempt
from services.placement.engine import NotPlaced, Placed, place
from services.placement.state import World

TTL = 1e9
SIZES = (4, 8, 16, 32, 64)
SEED = 7
ZONES = 10
CITIES = [  # 10 zones x 3 cities
    [(50.11, 8.68), (49.99, 8.25), (49.87, 8.65)],
    [(52.52, 13.40), (51.34, 12.37), (53.55, 9.99)],
    [(48.14, 11.58), (48.78, 9.18), (49.45, 11.08)],
    [(48.86, 2.35), (45.76, 4.84), (43.30, 5.37)],
    [(51.51, -0.13), (53.48, -2.24), (52.49, -1.89)],
    [(40.42, -3.70), (41.39, 2.17), (39.47, -0.38)],
    [(45.46, 9.19), (41.90, 12.50), (40.85, 14.27)],
    [(52.37, 4.90), (50.85, 4.35), (51.22, 4.40)],
    [(59.33, 18.07), (59.91, 10.75), (55.68, 12.57)],
    [(52.23, 21.01), (50.06, 19.94), (48.21, 16.37)],
]


def _status(rng: random.Random, i: int, at: datetime, full: bool) -> ev.NodeStatus:
    cores = rng.choice(SIZES)
    zone = i % ZONES
    lat, lon = rng.choice(CITIES[zone])
    free = float(cores) if full else float(rng.randint(0, 2 * cores)) / 2
    return ev.NodeStatus(
        node_id=f"node-{i:06d}",
        at=at,
        state="active",
        technologies=["docker"],
        cpu_cores=float(cores),
        cpu_free=free,
        memory_mb=cores * 4096,
        memory_free_mb=int(free * 4096),
        labels={"zone": f"zone-{zone}", "rack": f"r{i % 40}"},
        location=ev.Location(lat=lat + rng.uniform(-0.1, 0.1), lon=lon + rng.uniform(-0.1, 0.1)),
    )


def _fleet(n: int, rng: random.Random, full: bool = False) -> tuple[World, list[ev.NodeStatus]]:
    at = datetime.now(UTC)
    statuses = [_status(rng, i, at, full) for i in range(n)]
    w = World()
    for st in statuses:
        w.update_node(st, 0.0)
    return w, statuses


def _job(replicas: int = 3, cpu: float = 2.0, priority: int = 0, strategy: str = "best_fit", **c: Any) -> JobSpec:
    return JobSpec(
        name="bench",
        technology="docker",
        replicas=replicas,
        resources=Resources(cpu=cpu, memory_mb=int(cpu * 2048)),
        constraints=Constraints(**c),
        cluster="shared",
        workload=Workload(),
        strategy=strategy,  # type: ignore[arg-type]
        priority=priority,
    )


def _stats(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100)
    return {"median_us": round(statistics.median(samples), 1), "p99_us": round(q[98], 1), "n": len(samples)}


def _decisions(w: World, statuses: list[ev.NodeStatus], rng: random.Random, spec: JobSpec, k: int) -> list[float]:
    samples = []
    for _ in range(k):
        for _ in range(5):
            i = rng.randrange(len(statuses))
            st = statuses[i]
            free = float(rng.randint(0, int(2 * st.cpu_cores))) / 2
            w.update_node(msgspec.structs.replace(st, cpu_free=free, memory_free_mb=int(free * 4096)), 0.0)
        t0 = time.perf_counter_ns()
        r = place(spec, w, 1.0, TTL)
        samples.append((time.perf_counter_ns() - t0) / 1000)
        assert isinstance(r, Placed), r
    return samples


def _fill(w: World, statuses: list[ev.NodeStatus], rng: random.Random) -> None:
    """Two jobs per node, each half of it in 2-cpu replicas, priorities 0-9."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i, st in enumerate(statuses):
        half = int(st.cpu_cores) // 4
        for h in range(2):
            job_id = f"low-{i}-{h}"
            w.apply_decided(
                ev.PlacementDecided(
                    event_id=job_id,
                    job_id=job_id,
                    at=t0 + timedelta(seconds=rng.randrange(86400)),
                    cluster="shared",
                    technology="docker",
                    strategy="best_fit",
                    assignments=[ev.Assignment(replica=r, node_id=st.node_id) for r in range(half)],
                    candidates=[],
                    resources=Resources(cpu=2.0, memory_mb=4096),
                    replicas=half,
                    constraints=Constraints(),
                    priority=rng.randrange(10),
                )
            )


def _preemptions(w: World, k: int) -> tuple[list[float], int]:
    spec = _job(1, cpu=4.0, priority=100)
    samples = []
    victims = 0
    for j in range(k):
        job_id = f"urgent-{j}"
        t0 = time.perf_counter_ns()
        r = place(spec, w, 1.0, TTL, explain_failure=False)
        assert isinstance(r, NotPlaced)
        got = preempt.make_room(spec, job_id, w, 1.0, TTL, ())
        assert not isinstance(got, str), got
        placed, room = got
        w.decide_locally(
            ev.PlacementDecided(
                event_id=job_id,
                job_id=job_id,
                cluster="shared",
                technology="docker",
                strategy="best_fit",
                assignments=placed.assignments,
                candidates=placed.candidates,
                resources=spec.resources,
                priority=100,
                preempted=room.preempted(),
            )
        )
        preempt.replace_victims(room, w, 1.0, TTL)
        samples.append((time.perf_counter_ns() - t0) / 1000)
        victims += len(room.victims)
        w.undo(job_id)
        room.undo(w)
    return samples, victims


async def run() -> dict[str, Any]:
    rng = random.Random(SEED)
    out: dict[str, Any] = {}
    near = Near(lat=50.11, lon=8.68, max_km=500)  # Frankfurt
    for n in (10_000, 100_000):
        w, statuses = _fleet(n, rng)
        row: dict[str, Any] = {}
        for name, spec in {
            "spread_by": _job(spread_by="zone"),
            "near": _job(near=near),
            "nearest": _job(near=near, strategy="nearest"),
        }.items():
            _decisions(w, statuses, rng, spec, 100)  # warm-up (the first spread_by indexes the zones)
            row[name] = _stats(_decisions(w, statuses, rng, spec, 2000))
        w, statuses = _fleet(n, rng, full=True)
        _fill(w, statuses, rng)
        _preemptions(w, 10)
        samples, victims = _preemptions(w, 300)
        row["preempt"] = {**_stats(samples), "victims_per_decision": round(victims / len(samples), 2)}
        out[str(n)] = row
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "### Placement policies: one decision (engine)",
        "",
        "| nodes | spread_by zone p50 / p99 µs | near 500 km p50 / p99 µs | nearest p50 / p99 µs "
        "| preempt p50 / p99 µs (victims) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n, row in result.items():
        cells = [f"{row[k]['median_us']:,} / {row[k]['p99_us']:,}" for k in ("spread_by", "near", "nearest")]
        p = row["preempt"]
        cells.append(f"{p['median_us']:,} / {p['p99_us']:,} ({p['victims_per_decision']})")
        lines.append(f"| {int(n):,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
