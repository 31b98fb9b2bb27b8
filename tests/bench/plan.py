"""``placement.plan`` against a running placement service on a simulated fleet (§8.3).

BENCH_PLAN_NODES nodes (default 10,000) report every 5 s from a ``simnodes`` process; one
client sends plans one after another (closed loop) and times each round trip: a job that fits
(3 replicas of 2 cpu / 4 GiB, best_fit) and one that fits nowhere (a gpu no node has, so the
full census of the explanation runs). Beside them, the engine alone (``engine.place``) on the
same fleet in this process: what one decision costs without NATS, decode or encode.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Defaults, decode_job_request, normalise
from services.placement.engine import place
from services.placement.state import World
from tests.support.replay import read_stream, wait_for_nodes
from tests.support.system import system

NODES = int(os.environ.get("BENCH_PLAN_NODES", "10000"))
ROUNDS = int(os.environ.get("BENCH_PLAN_ROUNDS", "2000"))
FITS = json.dumps({"name": "bench", "replicas": 3, "resources": {"cpu": 2, "memory_mb": 4096}}).encode()
NOWHERE = json.dumps({"name": "bench", "resources": {"cpu": 1, "memory_mb": 512, "gpu": 64}}).encode()
TTL = 15.0


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1)


async def _time_plans(
    nc: Client, body: bytes, rounds: int, subject: str = s.PLACEMENT_PLAN
) -> tuple[list[float], dict[str, Any]]:
    """Round trips in µs, and the last reply."""
    out: list[float] = []
    reply: dict[str, Any] = {}
    for _ in range(rounds):
        t = time.perf_counter()
        msg = await nc.request(subject, body, timeout=10)
        out.append((time.perf_counter() - t) * 1e6)
        assert not (msg.headers or {}).get(s.ERROR_HEADER), msg.data
        reply = json.loads(msg.data)
    return out, reply


def _engine(statuses: list[ev.NodeStatus], body: bytes, rounds: int) -> list[float]:
    """``engine.place`` on the same fleet, in µs (the decision's own cost, as in bench placement)."""
    world = World()
    now = time.monotonic()
    for st in statuses:
        world.update_node(st, now)
    spec = normalise(decode_job_request(body), Defaults())
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        place(spec, world, now, TTL, explain_failure=True)
        out.append((time.perf_counter() - t) * 1e6)
    return out


async def run() -> dict[str, Any]:
    async with system(["placement"], sim_nodes=NODES, with_postgres=False, with_moto=False) as (_, nc):
        await wait_for_nodes(nc.jetstream(timeout=30), NODES)
        statuses = [
            e for e in await read_stream(nc.jetstream(timeout=30), s.NODES.name) if isinstance(e, ev.NodeStatus)
        ]
        await _time_plans(nc, FITS, 100)  # warm-up
        fits, fit_reply = await _time_plans(nc, FITS, ROUNDS)
        nowhere, fail_reply = await _time_plans(nc, NOWHERE, max(50, ROUNDS // 10))
        ping, _ = await _time_plans(nc, b"", ROUNDS, subject="$SRV.PING.placement")
    assert "decision" in fit_reply and "failure" in fail_reply, (fit_reply, fail_reply)
    engine_fits = _engine(statuses, FITS, ROUNDS)
    engine_nowhere = _engine(statuses, NOWHERE, max(50, ROUNDS // 10))
    return {
        "nodes": NODES,
        "rounds": ROUNDS,
        "plan_p50_us": _pct(fits, 0.5),
        "plan_p99_us": _pct(fits, 0.99),
        "plan_mean_us": round(statistics.fmean(fits), 1),
        "engine_p50_us": _pct(engine_fits, 0.5),
        "engine_p99_us": _pct(engine_fits, 0.99),
        "failure_p50_us": _pct(nowhere, 0.5),
        "failure_p99_us": _pct(nowhere, 0.99),
        "engine_failure_p50_us": _pct(engine_nowhere, 0.5),
        "engine_failure_p99_us": _pct(engine_nowhere, 0.99),
        "failure_reason": fail_reply["failure"]["reason"],
        "ping_p50_us": _pct(ping, 0.5),
        "ping_p99_us": _pct(ping, 0.99),
    }


def markdown(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"### placement.plan at {r['nodes']:,} nodes ({r['rounds']:,} plans, one client, closed loop)",
            "",
            "| plan | round trip p50 µs | p99 µs | engine alone p50 µs | p99 µs |",
            "|---|---:|---:|---:|---:|",
            f"| fits (3 replicas of 2 cpu / 4 GiB) | {r['plan_p50_us']} | {r['plan_p99_us']} | "
            f"{r['engine_p50_us']} | {r['engine_p99_us']} |",
            f"| fits nowhere (full census) | {r['failure_p50_us']} | {r['failure_p99_us']} | "
            f"{r['engine_failure_p50_us']} | {r['engine_failure_p99_us']} |",
            f"| (floor: `$SRV.PING.placement`) | {r['ping_p50_us']} | {r['ping_p99_us']} | | |",
        ]
    )
