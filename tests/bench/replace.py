"""Re-placement benchmark (§8.2): 10,000 nodes, 20,000 running replicas, then 1,000 nodes lost at once.

The system is one placement process (as ``tests/support/system.py`` starts it) and a simulated
fleet of BENCH_REPLACE_NODES nodes run as ten simnodes processes (``f0-…`` to ``f9-…``).
BENCH_REPLACE_JOBS accepted jobs (published as ``job.accepted`` straight into JOBS, so intake and
the gateway are not measured) of 1, 2 or 3 replicas (2 on average; best_fit, spread, and
``constraints.spread``; no ``max_runtime_s``) are placed first. Then the first fleet process is
stopped: a tenth of the nodes fall silent at once.

A node's loss is detected ``node_lost_s`` after its last status (the short ``node_lost_s`` below
instead of the default 30 s; the fleet reports every 5 s; a node silent for ``node_ttl_s`` takes
no new replicas, so a replica is rarely moved onto a node about to be lost, but it can be: such a
job counts until its second move, and these jobs are counted). For each job with a replica on a lost
node, the re-placement time is from the detection of the loss of the last of its nodes to the
arrival of the revision that moved its last affected replica (or the ``placement.degraded`` of
that revision); p50/p99/max over the jobs, and the total from the first detection to the last
re-placement. Placement's CPU over that window is its process CPU time after minus before,
with the same window's CPU before the loss (statuses only) given beside it. The invariant
checker then reads the streams: no node overbooked at any step, every revision in order, every
live job whole on live nodes or degraded. Bar: every replica re-placed within 5 s of detection.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Constraints, JobSpec, Resources, Workload
from tests.support.invariants import check_live, read_nodes, read_stream
from tests.support.procs import cpu_seconds
from tests.support.replay import wait_for_nodes
from tests.support.system import system

NODES = int(os.environ.get("BENCH_REPLACE_NODES", "10000"))
JOBS = int(os.environ.get("BENCH_REPLACE_JOBS", "10000"))
FLEETS = 10
INTERVAL_S = 5.0
SETTINGS = {"node_ttl_s": 10.0, "node_lost_s": 15.0}
"""A silent node takes no new replicas after node_ttl_s and is lost at node_lost_s (defaults 15 and 30 s)."""
BAR_S = 5.0
_decoder = msgspec.json.Decoder(ev.PlacementDecided | ev.PlacementDegraded | ev.PlacementFailed)


def spec(i: int) -> JobSpec:
    """Job ``i`` of the mix: 1, 2 or 3 replicas; every 5th spread strategy, every 10th constraints.spread."""
    return JobSpec(
        name=f"replace-{i}",
        technology="docker",
        replicas=1 + i % 3,
        resources=Resources(cpu=0.5, memory_mb=512),
        constraints=Constraints(spread=i % 10 == 3),
        cluster="shared",
        workload=Workload(),
        strategy="spread" if i % 5 == 1 else "best_fit",
    )


class Watch:
    """Placement events as they arrive (core subscriptions), with their arrival time."""

    def __init__(self) -> None:
        self.first: set[str] = set()
        self.later: list[tuple[float, ev.PlacementDecided | ev.PlacementDegraded]] = []
        self.changed = asyncio.Event()

    async def cb(self, msg: Msg) -> None:
        e = _decoder.decode(msg.data)
        if (isinstance(e, ev.PlacementDecided) and e.revision == 1) or isinstance(e, ev.PlacementFailed):
            self.first.add(e.job_id)
        elif isinstance(e, ev.PlacementDecided | ev.PlacementDegraded):
            self.later.append((time.time(), e))
        self.changed.set()

    async def until(self, done: Any, timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            self.changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"not within {timeout} s: {what}")
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
            except TimeoutError:
                pass


async def _accept_all(nc: Client) -> None:
    js = nc.jetstream(timeout=30)
    for start in range(0, JOBS, 500):
        futures = []
        for i in range(start, min(JOBS, start + 500)):
            e = ev.JobAccepted(event_id=f"replace-{i:05d}:{s.JOB_ACCEPTED}", job_id=f"replace-{i:05d}", spec=spec(i))
            futures.append(
                await js.publish_async(ev.commit_subject_of(e), ev.encode(e), headers={s.MSG_ID_HEADER: e.event_id})
            )
        await asyncio.gather(*futures)


async def _holdings(nc: Client) -> dict[str, ev.PlacementDecided]:
    latest: dict[str, ev.PlacementDecided] = {}
    for e in await read_stream(nc.jetstream(timeout=30), s.PLACEMENTS.name):
        if isinstance(e, ev.PlacementDecided):
            latest[e.job_id] = e
    return latest


def _pct(xs: list[float], q: float) -> float:
    return round(sorted(xs)[min(len(xs) - 1, int(q * len(xs)))], 2) if xs else 0.0


async def run() -> dict[str, Any]:
    async with system(
        ["placement"],
        sim_nodes=NODES,
        sim_interval=INTERVAL_S,
        sim_fleets=FLEETS,
        with_postgres=False,
        with_moto=False,
        settings=SETTINGS,
    ) as (sysm, nc):
        pid = sysm.procs["placement"][0].pid
        watch = Watch()
        for subject in (s.PLACEMENT_DECIDED, s.PLACEMENT_DEGRADED, s.PLACEMENT_FAILED):
            await nc.subscribe(subject, cb=watch.cb)
        await wait_for_nodes(nc.jetstream(timeout=30), NODES)
        await asyncio.sleep(INTERVAL_S)  # a fleet's first report is one burst: one interval spreads them out
        t = time.perf_counter()
        await _accept_all(nc)
        await watch.until(lambda: len(watch.first) >= JOBS, 600, f"{JOBS} jobs decided")
        place_s = time.perf_counter() - t
        holdings = await _holdings(nc)
        replicas = sum(len(d.assignments) for d in holdings.values())
        lost_prefix = "f0-"
        affected = {
            j: {a.replica for a in d.assignments if a.node_id and a.node_id.startswith(lost_prefix)}
            for j, d in holdings.items()
        }
        affected = {j: r for j, r in affected.items() if r}
        on_node = {(j, a.replica): a.node_id for j, d in holdings.items() for a in d.assignments if a.node_id}
        cpu_quiet0, quiet0 = cpu_seconds(pid), time.perf_counter()
        sysm.fleets[0].kill()
        nodes = await read_nodes(nc.jetstream(timeout=30))
        lost_s = timedelta(seconds=SETTINGS["node_lost_s"])
        detect = {n: v.last_at + lost_s for n, v in nodes.items() if n.startswith(lost_prefix)}
        first_detect = min(detect.values())
        await asyncio.sleep(max(0.0, (first_detect - datetime.now(UTC)).total_seconds()))
        cpu0, quiet_s = cpu_seconds(pid), time.perf_counter() - quiet0
        cpu_quiet = cpu0 - cpu_quiet0
        t0 = time.perf_counter()

        def moved() -> dict[str, float]:
            """Job -> arrival of the event that left none of its replicas on a lost node."""
            left = {j: set(r) for j, r in affected.items()}
            done: dict[str, float] = {}
            for at, e in watch.later:
                if e.job_id not in left:
                    continue
                if isinstance(e, ev.PlacementDecided):
                    still = {a.replica for a in e.assignments if a.node_id and a.node_id.startswith(lost_prefix)}
                    left[e.job_id] &= still
                if not left[e.job_id] and e.job_id not in done:
                    done[e.job_id] = at
            return done

        await watch.until(lambda: len(moved()) >= len(affected), 300, f"{len(affected)} jobs re-placed")
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu0
        done = moved()
        latency = []
        for j, at in done.items():
            detected = max(detect.get(on_node[(j, r)], first_detect) for r in affected[j])
            latency.append(at - detected.timestamp())
        last_detect = max(detect.values())
        report = await check_live(nc.jetstream(timeout=30), require_release=False, node_lost_s=SETTINGS["node_lost_s"])
        degraded = sum(1 for _, e in watch.later if isinstance(e, ev.PlacementDegraded))
        revisions = Counter(e.job_id for _, e in watch.later if isinstance(e, ev.PlacementDecided))
        onto_lost = {
            e.job_id
            for _, e in watch.later
            if isinstance(e, ev.PlacementDecided) and any((c.to or "").startswith(lost_prefix) for c in e.changes)
        }
    return {
        "nodes": NODES,
        "nodes_lost": len(detect),
        "jobs": JOBS,
        "replicas": replicas,
        "place_all_s": round(place_s, 1),
        "affected_jobs": len(affected),
        "affected_replicas": sum(len(r) for r in affected.values()),
        "degraded_events": degraded,
        "revisions": sum(revisions.values()),
        "revised_twice": sum(1 for n in revisions.values() if n > 1),
        "moved_onto_lost": len(onto_lost),
        "detection_spread_s": round((last_detect - first_detect).total_seconds(), 2),
        "replace_p50_s": round(statistics.median(latency), 2) if latency else 0.0,
        "replace_p99_s": _pct(latency, 0.99),
        "replace_max_s": round(max(latency), 2) if latency else 0.0,
        "total_s": round(max(done.values()) - first_detect.timestamp(), 2) if done else 0.0,
        "wall_s": round(wall, 2),
        "placement_cpu_s": round(cpu, 2),
        "placement_cpu_s_same_window_before": round(cpu_quiet * wall / max(quiet_s, 1e-9), 2),
        "node_lost_s": SETTINGS["node_lost_s"],
        "overbooked": len(report.overbooked),
        "unsettled": len(report.unsettled),
        "invariants_ok": report.ok,
        "violations": {k: v[:5] for k, v in report.violations.items()},
        "bar_met": bool(latency) and max(latency) <= BAR_S,
    }


def markdown(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"### Re-placement after losing {r['nodes_lost']:,} of {r['nodes']:,} nodes at once "
            f"({r['jobs']:,} jobs, {r['replicas']:,} replicas; node_lost_s {r['node_lost_s']:g})",
            "",
            f"{r['affected_replicas']:,} replicas of {r['affected_jobs']:,} jobs were on the lost nodes (placing "
            f"all jobs first took {r['place_all_s']} s); {r['revisions']:,} revisions; {r['revised_twice']} jobs "
            f"had two (replicas on two lost nodes detected apart, or a move onto a node lost soon after: "
            f"{r['moved_onto_lost']} jobs). Times from the detection of the loss (node_lost_s after "
            f"the node's last status; the detections spread over {r['detection_spread_s']} s) to the revision "
            "that moved the job's last affected replica:",
            "",
            "| p50 s | p99 s | max s | total s (first detection → last re-placement) | placement CPU s "
            "(statuses alone, same window) | degraded events | overbooked nodes | invariants | bar (≤ 5 s) |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {r['replace_p50_s']} | {r['replace_p99_s']} | {r['replace_max_s']} | {r['total_s']} | "
            f"{r['placement_cpu_s']} ({r['placement_cpu_s_same_window_before']}) | {r['degraded_events']} | "
            f"{r['overbooked']} | {'green' if r['invariants_ok'] else 'RED'} | "
            f"{'met' if r['bar_met'] else 'MISSED'} |",
        ]
    )
