"""Steady-state lifecycle benchmark (issue #23): submit → decided → complete/cancel → released.

The system as ``make run`` starts it (every service, nats-server, PostgreSQL, moto) with
``BENCH_NODES`` simulated nodes reporting every ``BENCH_NODE_INTERVAL_S`` seconds. An open
loop offers lifecycles at fixed rates, one step per rate: ``BENCH_WARM_S`` seconds of warm-up
at that rate (at least the longest end delay, so releases of the previous rate are over),
then ``BENCH_STEP_S`` measured seconds. The mix: 1 to 5 replicas, every other job with
``max_runtime_s`` 3600 (never reached during a run), one in ten through ``placement.request``
instead of ``job.submit``, one in ``BENCH_DEDICATED_EVERY`` dedicated (instances in moto);
each placed job is completed (``job.complete``) or cancelled (``job.cancel``), half each,
``BENCH_END_S`` ("10,60": uniform) seconds after its decision arrived, so capacity is
released and reused.

Per step: offered and achieved lifecycles/s (``placement.released`` seen per second during the
measured window), p50/p99 submit → ``placement.decided`` (from when the submit was *due*, so a
stalled sender hides no queueing) and end request → ``placement.released``, errors by request
and code (503 shed or no responders, 504, others), jobs not decided or not released 5 s before
the step ended, the durable consumers' pending counts at its end (a growing backlog means not
sustained), CPU µs per lifecycle by process (the fleet generator, moto and this load generator
included) and the machine's steal. After the last step every open job is ended at once, and
the invariant checker runs over the streams once all are released.

Knobs: BENCH_NODES (10000), BENCH_NODE_INTERVAL_S (5), BENCH_SIM_PROCS (fleet processes: 2 over
50,000 nodes, else 1), BENCH_RATES ("250,500,750,1000,1250"),
BENCH_WARM_S (65), BENCH_STEP_S (60), BENCH_END_S ("10,60"), BENCH_DEDICATED_EVERY (200),
BENCH_DRAIN_S (180), BENCH_SEED (23).
"""

from __future__ import annotations

import asyncio
import heapq
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from schemas import subjects as s
from services.gateway.handlers import job_id_for
from services.runtime import direct
from tests.bench._machine import Steal
from tests.bench._table import table
from tests.bench._usage import cpu_seconds, delta, machine_busy_s, others_pct
from tests.support.invariants import check_live
from tests.support.replay import wait_for_nodes
from tests.support.system import system

NODES = int(os.environ.get("BENCH_NODES", "10000"))
NODE_INTERVAL_S = float(os.environ.get("BENCH_NODE_INTERVAL_S", "5"))
SIM_PROCS = int(os.environ.get("BENCH_SIM_PROCS", "2" if NODES > 50_000 else "1"))
RATES = [int(x) for x in os.environ.get("BENCH_RATES", "250,500,750,1000,1250").split(",")]
WARM_S = float(os.environ.get("BENCH_WARM_S", "65"))
STEP_S = float(os.environ.get("BENCH_STEP_S", "60"))
END_MIN_S, END_MAX_S = (float(x) for x in os.environ.get("BENCH_END_S", "10,60").split(","))
DEDICATED_EVERY = int(os.environ.get("BENCH_DEDICATED_EVERY", "200"))
DRAIN_S = float(os.environ.get("BENCH_DRAIN_S", "180"))
SEED = int(os.environ.get("BENCH_SEED", "23"))
GRACE_S = 5.0
"""A job due (or an end sent) later than this before a step's end is not yet counted missing."""
TICK_S = 0.005

_enc = msgspec.json.Encoder()
_DECIDED = s.PLACEMENT_DECIDED.encode()
_FAILED = s.PLACEMENT_FAILED.encode()
_ERROR = s.ERROR_CODE_HEADER.encode() + b":"


class _Ref(msgspec.Struct):
    job_id: str
    revision: int = 1


class _JobRef(msgspec.Struct):
    job_id: str


_ref = msgspec.json.Decoder(_Ref)
_job = msgspec.json.Decoder(_JobRef)


def error_code(headers: bytes | None) -> str | None:
    """The error code of a reply's raw headers (the service's error header, or the server's own
    status such as ``503`` no responders), or None for a successful reply."""
    if not headers:
        return None
    status = headers.split(b"\r\n", 1)[0].split()
    if len(status) > 1 and status[1].isdigit():
        return status[1].decode()
    i = headers.find(_ERROR)
    if i < 0:
        return None
    return headers[i + len(_ERROR) :].split(b"\r\n", 1)[0].strip().decode() or "?"


def spec(i: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """The subject and body (without ``request_id``) of lifecycle ``i`` of the mix."""
    body: dict[str, Any] = {
        "name": f"lc-{i}",
        "replicas": rng.randint(1, 5),
        "resources": {"cpu": 0.25, "memory_mb": 256},
    }
    if DEDICATED_EVERY and i % DEDICATED_EVERY == DEDICATED_EVERY - 1:
        body.update(cluster="dedicated", replicas=1, resources={"cpu": 1, "memory_mb": 1024})
    if i % 2:
        body["max_runtime_s"] = 3600
    return (s.PLACEMENT_REQUEST if i % 10 == 3 else s.JOB_SUBMIT), body


def pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    xs = sorted(xs)
    return {
        "p50_ms": round(1000 * xs[len(xs) // 2], 1),
        "p99_ms": round(1000 * xs[min(len(xs) - 1, int(0.99 * len(xs)))], 1),
        "max_ms": round(1000 * xs[-1], 1),
    }


@dataclass
class Lifecycles:
    """The load generator's book of every lifecycle: when each step happened, by job id.
    Messages are handed over raw from the client's read loop (``direct``): no task per job."""

    nc: Client
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    due: dict[str, float] = field(default_factory=dict)
    """job id -> when its submit was due."""
    decided: dict[str, float] = field(default_factory=dict)
    """job id -> when its first decision (decided, failed or rejected) arrived."""
    failed: set[str] = field(default_factory=set)
    ended: dict[str, float] = field(default_factory=dict)
    """job id -> when its complete/cancel was sent."""
    released: dict[str, float] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    """Jobs whose submit got an error reply (e.g. 503 shed): they may never exist."""
    errors: list[tuple[float, str]] = field(default_factory=list)
    """(when, "<request> <code>") of each error reply."""
    ends: list[tuple[float, str]] = field(default_factory=list)
    """Heap of (when due, job id) of the complete/cancel requests still to send."""
    provisioned: set[str] = field(default_factory=set)
    """Dedicated jobs with instances launched (``cluster.provisioned``)."""
    torn_down: set[str] = field(default_factory=set)
    drain: bool = False
    """Set after the last step: every decided job is ended at once."""
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    _inbox: str = ""
    _replies: dict[bytes, tuple[str, str]] = field(default_factory=dict)
    _n: int = 0

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        await direct.subscribe(self.nc, self._inbox + ".*", self._on_reply)
        for subject in (s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.JOB_REJECTED):
            await direct.subscribe(self.nc, subject, self._on_decision)
        await direct.subscribe(self.nc, s.PLACEMENT_RELEASED, self._on_released)
        await direct.subscribe(self.nc, s.CLUSTER_PROVISIONED, self._on_provisioned)
        await direct.subscribe(self.nc, s.CLUSTER_TORN_DOWN, self._on_torn_down)

    def open_jobs(self) -> int:
        """Jobs submitted (not refused) that are neither released nor ended without a placement."""
        return len(self.due) - len(self.refused) - len(self.released) - len(self.failed - self.refused)

    def instances_up(self) -> int:
        """Dedicated jobs released whose launched instances are not torn down yet."""
        return len((self.provisioned & self.released.keys()) - self.torn_down)

    def _check_settled(self) -> None:
        if self.drain and self.open_jobs() <= 0 and self.instances_up() == 0:
            self.settled.set()

    async def _send(self, subject: str, body: bytes, what: str, job_id: str) -> None:
        self._n += 1
        reply = f"{self._inbox}.{self._n}"
        self._replies[reply.encode()] = (what, job_id)
        await self.nc.publish(subject, body, reply=reply)

    async def submit(self, i: int, due: float) -> None:
        subject, body = spec(i, self.rng)
        key = f"lc-{self.run_id}-{i}"
        jid = job_id_for(key)
        self.due[jid] = due
        await self._send(subject, _enc.encode({**body, "request_id": key}), subject, jid)

    async def end_due(self, now: float) -> None:
        while self.ends and (self.drain or self.ends[0][0] <= now):
            _, jid = heapq.heappop(self.ends)
            self.ended.setdefault(jid, time.perf_counter())  # a retry keeps the first attempt's time
            if self.rng.random() < 0.5:
                await self._send(s.JOB_COMPLETE, _enc.encode({"job_id": jid, "outcome": "succeeded"}), "complete", jid)
            else:
                await self._send(s.JOB_CANCEL, _enc.encode({"job_id": jid}), "cancel", jid)

    def _on_reply(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        what, jid = self._replies.pop(subject, ("?", ""))
        code = error_code(headers)
        if code is None:
            return
        now = time.perf_counter()
        self.errors.append((now, f"{what} {code}"))
        if what in ("complete", "cancel") and code != "409" and jid not in self.released:
            heapq.heappush(self.ends, (now + 1.0, jid))  # retried, as a careful client would
            return
        if what in (s.JOB_SUBMIT, s.PLACEMENT_REQUEST) and code != "504" and jid not in self.decided:
            self.refused.add(jid)  # 504: the job exists, its decision is only late
            self._check_settled()

    def _on_decision(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        ref = _ref.decode(data)
        jid = ref.job_id
        if ref.revision != 1 or jid not in self.due or jid in self.decided:
            return
        now = time.perf_counter()
        self.decided[jid] = now
        self.refused.discard(jid)
        if subject == _DECIDED:
            heapq.heappush(self.ends, (now + self.rng.uniform(END_MIN_S, END_MAX_S), jid))
        else:
            self.failed.add(jid)
            self._check_settled()

    def _on_provisioned(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        jid = _job.decode(data).job_id
        if jid in self.due:
            self.provisioned.add(jid)

    def _on_torn_down(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        jid = _job.decode(data).job_id
        if jid in self.due:
            self.torn_down.add(jid)
            self._check_settled()

    def _on_released(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        jid = _job.decode(data).job_id
        if jid in self.due and jid not in self.released:
            self.released[jid] = time.perf_counter()
            self._check_settled()


async def offer(lc: Lifecycles, rate: int, seconds: float, first: int) -> int:
    """Offer ``rate`` lifecycles/s for ``seconds`` (ends sent when due meanwhile); the next index."""
    t0 = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) - t0 < seconds:
        due = int((now - t0) * rate)
        while n < due:
            await lc.submit(first + n, t0 + n / rate)
            n += 1
        await lc.end_due(now)
        await asyncio.sleep(TICK_S)
    return first + n


async def pending(js: JetStreamContext) -> dict[str, int]:
    """Messages not yet delivered plus delivered but unacknowledged, per durable consumer of the
    services (the Cluster Manager's ``cluster-manager``, which nothing here reads, left out)."""
    out: dict[str, int] = {}
    for stream in (s.JOBS, s.PLACEMENTS, s.CLUSTERS, s.NODES):
        for ci in await js.consumers_info(stream.name):
            if ci.config.durable_name and ci.config.durable_name != s.CLUSTER_MANAGER.durable:  # read by no service
                out[f"{stream.name}/{ci.config.durable_name}"] = (ci.num_pending or 0) + (ci.num_ack_pending or 0)
    return out


def window(lc: Lifecycles, t0: float, t1: float) -> dict[str, Any]:
    """Figures of the lifecycles whose submit was due, or whose end was sent, in [t0, t1)."""
    due = [j for j, t in lc.due.items() if t0 <= t < t1]
    decide = [lc.decided[j] - lc.due[j] for j in due if j in lc.decided and j not in lc.failed]
    ended = [j for j, t in lc.ended.items() if t0 <= t < t1]
    release = [lc.released[j] - lc.ended[j] for j in ended if j in lc.released]
    released_in = sum(1 for t in lc.released.values() if t0 <= t < t1)
    errors = Counter(e for t, e in lc.errors if t0 <= t < t1)
    return {
        "submitted": len(due),
        "decided_per_s": round(len(decide) / (t1 - t0), 1),
        "lifecycles_per_s": round(released_in / (t1 - t0), 1),
        "released": released_in,
        "decide": pct(decide),
        "release": pct(release),
        "failed": sum(1 for j in due if j in lc.failed),
        "undecided": sum(1 for j in due if j not in lc.decided and j not in lc.refused and lc.due[j] < t1 - GRACE_S),
        "unreleased": sum(1 for j in ended if j not in lc.released and lc.ended[j] < t1 - GRACE_S),
        "errors": dict(sorted(errors.items())),
    }


async def warm_up(nc: Client) -> None:
    """Until placement has the fleet: a probe job through ``placement.request`` is decided."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    body = _enc.encode({"name": "probe", "replicas": 1, "resources": {"cpu": 0.1, "memory_mb": 64}})
    while loop.time() < deadline:
        try:
            msg = await nc.request(s.PLACEMENT_REQUEST, body, timeout=10)
        except (TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.5)  # the next attempt, not a wait for an event
            continue
        ok = not (msg.headers and s.ERROR_CODE_HEADER in msg.headers)
        if ok and b'"assignments"' in msg.data:  # a placement.decided, not failed/rejected
            jid = _ref.decode(msg.data).job_id
            await nc.request(s.JOB_CANCEL, _enc.encode({"job_id": jid}), timeout=10)
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("placement never decided a probe job")


async def run() -> dict[str, Any]:
    result: dict[str, Any] = {
        "nodes": NODES,
        "node_interval_s": NODE_INTERVAL_S,
        "fleet_processes": SIM_PROCS,
        "warm_s": WARM_S,
        "step_s": STEP_S,
        "end_s": [END_MIN_S, END_MAX_S],
        "dedicated_every": DEDICATED_EVERY,
        "steps": [],
    }
    async with system(sim_nodes=NODES, sim_interval=NODE_INTERVAL_S, sim_fleets=SIM_PROCS) as (sysm, nc):
        js = nc.jetstream(timeout=30)
        await wait_for_nodes(js, NODES, timeout=180)
        await warm_up(nc)
        lc = Lifecycles(nc)
        await lc.start()
        i = 0
        for rate in RATES:
            i = await offer(lc, rate, WARM_S, i)
            t0, cpu0, steal, busy0 = time.perf_counter(), cpu_seconds(sysm), Steal(), machine_busy_s()
            i = await offer(lc, rate, STEP_S, i)
            t1 = time.perf_counter()
            cpu = delta(cpu0, cpu_seconds(sysm))
            others = others_pct(machine_busy_s() - busy0, cpu, t1 - t0)
            step: dict[str, Any] = {"offered_per_s": rate, **window(lc, t0, t1)}
            step["pending_at_end"] = await pending(js)
            n = max(1, step["released"])
            step["cpu_us_per_lifecycle"] = {k: round(1e6 * v / n) for k, v in sorted(cpu.items())}
            step["cpu_us_per_lifecycle"]["total"] = sum(step["cpu_us_per_lifecycle"].values())
            step["steal_pct"] = steal.pct()
            step["others_pct_of_core"] = others
            result["steps"].append(step)
        lc.drain = True
        await lc.end_due(time.perf_counter())
        t = time.perf_counter()
        while not lc.settled.is_set() and time.perf_counter() - t < DRAIN_S:
            try:  # ends of jobs decided late go out as their decisions arrive
                await asyncio.wait_for(lc.settled.wait(), 0.25)
            except TimeoutError:
                await lc.end_due(time.perf_counter())
        result["drain"] = {
            "seconds": round(time.perf_counter() - t, 1),
            "open_jobs": lc.open_jobs(),
            "instances_up": lc.instances_up(),
        }
        result["pending_after_drain"] = await pending(js)
        t = time.perf_counter()
        live = [j for j in lc.due if j not in lc.refused]
        report = await check_live(js, submitted_ids=live, require_release=True)
        result["invariants"] = {
            "ok": report.ok,
            "seconds": round(time.perf_counter() - t, 1),
            "jobs": report.jobs,
            "decided": report.decided,
            "violations": {k: (len(v), v[:5]) for k, v in report.violations.items()},
        }
        result["totals"] = {
            "submitted": len(lc.due),
            "refused": len(lc.refused),
            "decided": len(lc.decided) - len(lc.failed),
            "failed": len(lc.failed),
            "released": len(lc.released),
            "errors": dict(sorted(Counter(e for _, e in lc.errors).items())),
        }
    return result


def _backlog(p: dict[str, int]) -> str:
    """The total backlog and its largest consumer."""
    if not p or not any(p.values()):
        return "0"
    top = max(p, key=lambda k: p[k])
    return f"{sum(p.values())} ({top}: {p[top]})"


def _errors(e: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in e.items()) or "0"


def markdown(r: dict[str, Any]) -> str:
    steps = r["steps"]
    inv = r.get("invariants", {})
    lines = [
        f"### Steady-state lifecycles ({r['nodes']:,} nodes every {r['node_interval_s']:g} s; per step "
        f"{r['warm_s']:g} s warm-up + {r['step_s']:g} s measured; ends {r['end_s'][0]:g} to {r['end_s'][1]:g} s "
        "after placement)",
        "",
        *table(
            [
                "offered/s",
                "lifecycles/s",
                "decided/s",
                "decide p50 / p99 ms",
                "release p50 / p99 ms",
                "errors",
                "failed",
                "undecided",
                "unreleased",
                "pending at end",
                "steal %",
                "others % of a core",
            ],
            (
                [
                    x["offered_per_s"],
                    x["lifecycles_per_s"],
                    x["decided_per_s"],
                    f"{x['decide']['p50_ms']} / {x['decide']['p99_ms']}",
                    f"{x['release']['p50_ms']} / {x['release']['p99_ms']}",
                    _errors(x["errors"]),
                    x["failed"],
                    x["undecided"],
                    x["unreleased"],
                    _backlog(x["pending_at_end"]),
                    x["steal_pct"],
                    x.get("others_pct_of_core", ""),
                ]
                for x in steps
            ),
        ),
    ]
    procs = sorted({k for x in steps for k in x["cpu_us_per_lifecycle"]} - {"total"})
    if steps:
        lines += [
            "",
            "CPU µs per lifecycle (per `placement.released` in the window), by process; `client` is this "
            "load generator, `simnodes#0` the fleet generator:",
            "",
            *table(
                ["process", *(f"{x['offered_per_s']}/s" for x in steps)],
                [
                    *([k, *(x["cpu_us_per_lifecycle"].get(k, "") for x in steps)] for k in procs),
                    ["**total**", *(x["cpu_us_per_lifecycle"]["total"] for x in steps)],
                ],
            ),
        ]
    if "drain" in r:
        lines += [
            "",
            f"Drain: {r['drain']['open_jobs']} jobs still open and {r['drain'].get('instances_up', 0)} released "
            f"dedicated jobs with instances not torn down {r['drain']['seconds']} s after ending them all; "
            f"invariants {'green' if inv.get('ok') else 'RED'} over {inv.get('jobs', 0)} jobs "
            f"({inv.get('seconds', 0)} s){'' if inv.get('ok') else ': ' + str(inv.get('violations'))}.",
        ]
        if r["drain"]["open_jobs"] or r["drain"].get("instances_up"):
            lines.append(
                "The drain ran out of time (BENCH_DRAIN_S): jobs still being released count as `unreleased` "
                "(and their dedicated instances as `instances_left`) above; the backlog, not a lost release."
            )
    return "\n".join(lines)
