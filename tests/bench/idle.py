"""Idle cost (issue #23): the whole system with a simulated fleet and no jobs.

Two fleets, each on a fresh system as ``make run`` starts it (every service, nats-server,
PostgreSQL, moto): 10,000 nodes every 5 s, then 100,000 nodes every 10 s. For each, the
CPU of every process over ``BENCH_IDLE_S`` seconds as % of one core, and the total with and
without the fleet generator. For the big fleet also how far behind placement's view of the
nodes is: a probe status (a node ``lagprobe`` with a fresh label value) is published and
``placement.plan`` is asked, until it answers with a decision, for a job only that status
satisfies; the time from publishing to that answer bounds the lag of placement's node-status
subscription from above (it includes one plan round trip). The fleet's achieved rate is the
NODES stream's growth in sequence numbers.

Knobs: BENCH_IDLE_S (60), BENCH_IDLE_FLEETS ("10000:5,100000:10" as nodes:interval[:churn], churn
being the chance that a node's free figures changed since its last report, 1 by default: see
``services.simnodes.fleet.Fleet``),
BENCH_IDLE_SIM_PROCS (fleet processes for fleets over 50,000 nodes: 2), BENCH_PROBE_EVERY_S (1),
BENCH_PROBE_TIMEOUT_S (10: a probe unanswered that long counts as an error, the view at least
that far behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections import Counter
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client

from schemas import events as ev
from schemas import replies as r
from schemas import subjects as s
from tests.bench._machine import Steal
from tests.bench._table import table
from tests.bench._usage import cpu_seconds, delta, is_fleet, machine_busy_s, others_pct
from tests.support.replay import wait_for_nodes
from tests.support.system import System, system

IDLE_S = float(os.environ.get("BENCH_IDLE_S", "60"))
FLEETS = [
    (int(f[0]), float(f[1]), float(f[2]) if len(f) > 2 else 1.0)
    for f in (x.split(":") for x in os.environ.get("BENCH_IDLE_FLEETS", "10000:5,100000:10").split(","))
]
SIM_PROCS = int(os.environ.get("BENCH_IDLE_SIM_PROCS", "2"))
PROBE_EVERY_S = float(os.environ.get("BENCH_PROBE_EVERY_S", "1"))
PROBE_TIMEOUT_S = float(os.environ.get("BENCH_PROBE_TIMEOUT_S", "10"))
CATCH_UP_S = 60.0
SETTLED_PROBES = 3
SETTLED_MS = 250.0
PROBE_NODE = "lagprobe"
_plan = msgspec.json.Decoder(r.PlanReply)
_enc = msgspec.json.Encoder()
_CLIENT = re.compile(r'"v[^"]*:python3:([^"]+)"')


def shares(cpu: dict[str, float], seconds: float) -> dict[str, float]:
    """CPU seconds over ``seconds`` as % of one core, per process, with ``total`` (everything)
    and ``total_without_fleet`` (the fleet generator excluded), ``total_without_fleet_and_moto``
    (EC2's stand-in excluded too: the scheduler's own processes); the benchmark's own process
    (``client``) is reported but counted in no total."""
    out = {k: round(100 * v / seconds, 1) for k, v in sorted(cpu.items())}
    system_only = {k: v for k, v in cpu.items() if k != "client"}
    out["total"] = round(100 * sum(system_only.values()) / seconds, 1)
    out["total_without_fleet"] = round(100 * sum(v for k, v in system_only.items() if not is_fleet(k)) / seconds, 1)
    ours = sum(v for k, v in system_only.items() if not is_fleet(k) and k != "moto")
    out["total_without_fleet_and_moto"] = round(100 * ours / seconds, 1)
    return out


def quantiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    return {
        "n": len(xs),
        "p50_ms": round(1000 * xs[len(xs) // 2], 1),
        "p99_ms": round(1000 * xs[min(len(xs) - 1, int(0.99 * len(xs)))], 1),
        "max_ms": round(1000 * xs[-1], 1),
    }


async def probe_lag(nc: Client, timeout: float = 30.0) -> float:
    """Seconds from publishing a status only this probe's job fits to placement planning on it."""
    nonce = uuid.uuid4().hex[:12]
    status = ev.NodeStatus(
        node_id=PROBE_NODE,
        state="active",
        technologies=["docker"],
        cpu_cores=4.0,
        cpu_free=4.0,
        memory_mb=8192,
        memory_free_mb=8192,
        labels={"probe": nonce},
    )
    spec = _enc.encode(
        {
            "name": "lagprobe",
            "replicas": 1,
            "resources": {"cpu": 0.1, "memory_mb": 64},
            "constraints": {"labels": {"probe": nonce}, "nodes": [PROBE_NODE]},
        }
    )
    t0 = time.perf_counter()
    await nc.publish(ev.subject_of(status), ev.encode(status))
    while time.perf_counter() - t0 < timeout:
        msg = await nc.request(s.PLACEMENT_PLAN, spec, timeout=timeout)
        if msg.headers and s.ERROR_CODE_HEADER in msg.headers:
            raise RuntimeError(f"placement.plan refused the probe: {msg.headers} {msg.data!r}")
        if _plan.decode(msg.data).decision is not None:
            return time.perf_counter() - t0
    raise TimeoutError(f"placement never saw the probe status in {timeout} s")


async def catch_up(nc: Client) -> float | None:
    """Seconds until placement has caught up with the fleet's first burst (every node at once, from
    each fleet process): until :data:`SETTLED_PROBES` probes in a row answer within
    :data:`SETTLED_MS` (one answered probe only says that the burst of the fleet process whose
    statuses came first is absorbed); None if not within ``CATCH_UP_S``."""
    t0 = time.perf_counter()
    settled = 0
    while settled < SETTLED_PROBES:
        left = CATCH_UP_S - (time.perf_counter() - t0)
        if left <= 0:
            return None
        try:
            lag = await probe_lag(nc, timeout=left)
        except (nats.errors.Error, TimeoutError, RuntimeError):
            return None
        settled = settled + 1 if lag * 1000 <= SETTLED_MS else 0
    return round(time.perf_counter() - t0, 1)


def slow_consumers(sysm: System) -> dict[str, int]:
    """How often nats-server cut each client off as a slow consumer so far, from its log."""
    out: Counter[str] = Counter()
    with contextlib.suppress(OSError), open(sysm.tmp / "nats-server.log", errors="replace") as f:
        for line in f:
            if "Slow Consumer Detected" in line:
                m = _CLIENT.search(line)
                out[m.group(1) if m else "?"] += 1
    return dict(out)


async def measure(nodes: int, interval: float, churn: float = 1.0) -> dict[str, Any]:
    procs = SIM_PROCS if nodes > 50_000 else 1
    env = {"SIM_CHURN": str(churn)}
    async with system(sim_nodes=nodes, sim_interval=interval, sim_fleets=procs, env=env) as (sysm, nc):
        js = nc.jetstream(timeout=30)
        t = time.perf_counter()
        await wait_for_nodes(js, nodes, timeout=300)
        up_s = time.perf_counter() - t
        caught_up = await catch_up(nc)
        out = await _window(sysm, nc, nodes, interval, procs, up_s)
        return {**out, "churn": churn, "placement_caught_up_s": caught_up}


async def _window(sysm: System, nc: Client, nodes: int, interval: float, procs: int, up_s: float) -> dict[str, Any]:
    js = nc.jetstream(timeout=30)
    seq0 = (await js.stream_info(s.NODES.name)).state.last_seq
    steal, before, t0, busy0 = Steal(), cpu_seconds(sysm), time.perf_counter(), machine_busy_s()
    lags: list[float] = []
    errors: list[str] = []
    slow: list[tuple[float, float]] = []
    while (now := time.perf_counter()) - t0 < IDLE_S:
        try:
            lags.append(await probe_lag(nc, timeout=PROBE_TIMEOUT_S))
            if lags[-1] > 0.1:
                slow.append((round(now - t0, 1), round(1000 * lags[-1])))
        except (nats.errors.Error, TimeoutError, RuntimeError) as e:  # e.g. placement cut off as a slow consumer
            errors.append(repr(e))
        # the next probe at its own time, not a sleep standing in for an event
        await asyncio.sleep(max(0.0, PROBE_EVERY_S - (time.perf_counter() - now)))
    seconds = time.perf_counter() - t0
    cpu = delta(before, cpu_seconds(sysm))
    others = others_pct(machine_busy_s() - busy0, cpu, seconds)
    seq1 = (await js.stream_info(s.NODES.name)).state.last_seq
    return {
        "nodes": nodes,
        "interval_s": interval,
        "fleet_processes": procs,
        "fleet_up_s": round(up_s, 1),
        "seconds": round(seconds, 1),
        "statuses_per_s": {"offered": round(nodes / interval), "stored": round((seq1 - seq0) / seconds)},
        "cpu_pct_of_core": shares(cpu, seconds),
        "placement_view_lag": quantiles(lags),
        "slow_probes": slow,  # (seconds into the window, lag ms) of each probe over 100 ms
        "probe_errors": errors,
        "slow_consumers": slow_consumers(sysm),
        "steal_pct": steal.pct(),
        "others_pct_of_core": others,
    }


async def run() -> dict[str, Any]:
    return {"idle_s": IDLE_S, "fleets": [await measure(n, i, c) for n, i, c in FLEETS]}


def _errors(e: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in e.items()) or "0"


def markdown(res: dict[str, Any]) -> str:
    fleets = res["fleets"]
    heads = [
        f"{f['nodes']:,} nodes / {f['interval_s']:g} s" + (f", churn {f['churn']:g}" if f.get("churn", 1) != 1 else "")
        for f in fleets
    ]
    procs = sorted(
        {k for f in fleets for k in f["cpu_pct_of_core"]}
        - {"total", "total_without_fleet", "total_without_fleet_and_moto"}
    )
    rows: list[list[object]] = [[k, *(f["cpu_pct_of_core"].get(k, "") for f in fleets)] for k in procs]
    rows += [
        ["**total (system + fleet)**", *(f["cpu_pct_of_core"]["total"] for f in fleets)],
        ["**total without the fleet generator**", *(f["cpu_pct_of_core"]["total_without_fleet"] for f in fleets)],
        [
            "**total without the fleet generator and moto**",
            *(f["cpu_pct_of_core"]["total_without_fleet_and_moto"] for f in fleets),
        ],
        [
            "statuses/s offered / stored",
            *(f"{f['statuses_per_s']['offered']} / {f['statuses_per_s']['stored']}" for f in fleets),
        ],
        [
            "placement view lag p50 / p99 / max ms (probes)",
            *(
                f"{q.get('p50_ms', '-')} / {q.get('p99_ms', '-')} / {q.get('max_ms', '-')} ({q['n']})"
                for q in (f["placement_view_lag"] for f in fleets)
            ),
        ],
        ["probe errors (no answer in time)", *(len(f["probe_errors"]) for f in fleets)],
        [
            "probes over 100 ms (s into the window: ms)",
            *(", ".join(f"{a:g}: {b}" for a, b in f.get("slow_probes", [])) or "none" for f in fleets),
        ],
        [
            "placement caught up with the first burst after s (3 probes in a row within 250 ms)",
            *(f["placement_caught_up_s"] for f in fleets),
        ],
        ["cut off as slow consumers", *(_errors(f["slow_consumers"]) for f in fleets)],
        ["steal %", *(f["steal_pct"] for f in fleets)],
        ["others (outside this system) % of a core", *(f.get("others_pct_of_core", "") for f in fleets)],
    ]
    return "\n".join(
        [
            f"### Idle cost, no jobs ({res['idle_s']:g} s per fleet; CPU as % of one core; "
            "`client` is this benchmark, in neither total)",
            "",
            *table(["process", *heads], rows),
        ]
    )
