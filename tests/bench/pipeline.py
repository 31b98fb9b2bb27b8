"""End-to-end placement benchmark: ``job.submit`` in, ``placement.decided`` out, at 10,000 nodes.

Latency is measured per job from sending the request (for the open loop: from the
moment it was *due*, so a stalled sender cannot hide queueing) to receiving that job's
decision on a core subscription, exactly as a client would see it.

Knobs (environment): BENCH_NODES (10000), BENCH_CLOSED_S (10), BENCH_OPEN_S (20),
BENCH_RATES ("500,1000,2000,4000"), BENCH_CLIENTS ("1,16,256").
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
import uuid
from typing import Any

import msgspec
from nats.aio.client import Client

from schemas import subjects as s
from services.gateway.handlers import job_id_for
from services.runtime import direct
from tests.bench._machine import Steal
from tests.bench._table import table
from tests.support.system import System, system

NODES = int(os.environ.get("BENCH_NODES", "10000"))
CLOSED_S = float(os.environ.get("BENCH_CLOSED_S", "10"))
OPEN_S = float(os.environ.get("BENCH_OPEN_S", "20"))
RATES = [int(r) for r in os.environ.get("BENCH_RATES", "500,1000,2000,4000").split(",")]
CLIENTS = [int(c) for c in os.environ.get("BENCH_CLIENTS", "1,16,256").split(",")]
SERVICES = os.environ.get("BENCH_SERVICES", "gateway,intake,placement,metadata,provisioner,teardown").split(",")
_enc = msgspec.json.Encoder()
_DECIDED = s.PLACEMENT_DECIDED.encode()
_ERROR_CODE = s.ERROR_CODE_HEADER.encode()


class _Ref(msgspec.Struct):
    job_id: str


_ref = msgspec.json.Decoder(_Ref)


def body(key: str) -> bytes:
    return _enc.encode({"name": "bench", "replicas": 1, "resources": {"cpu": 0.1, "memory_mb": 64}, "request_id": key})


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    xs = sorted(xs)

    def q(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2)

    return {"p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": round(xs[-1] * 1000, 2)}


class Collector:
    """Decisions by job id, with their arrival time (subscribe it with :meth:`subscribe`:
    decisions are handed over raw from the client's read loop, so the load generator,
    which shares the two cores with the system, spends little on each)."""

    def __init__(self) -> None:
        self.start: dict[str, float] = {}
        self.latency: dict[str, float] = {}
        self.failed: set[str] = set()
        self.waiters: dict[str, asyncio.Future[None]] = {}

    async def subscribe(self, nc: Client) -> None:
        for subject in (s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.JOB_REJECTED):
            await direct.subscribe(nc, subject, self.on)

    def on(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        now = time.perf_counter()
        jid = _ref.decode(data).job_id
        t0 = self.start.get(jid)
        if t0 is None or jid in self.latency:
            return
        self.latency[jid] = now - t0
        if subject != _DECIDED:
            self.failed.add(jid)
        fut = self.waiters.pop(jid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def expect(self) -> tuple[str, str, asyncio.Future[None]]:
        """A new job (idempotency key, job id) and the future its decision resolves, timed from now."""
        key = uuid.uuid4().hex
        jid = job_id_for(key)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[jid] = fut
        self.start[jid] = time.perf_counter()
        return key, jid, fut


async def closed_loop(nc: Client, col: Collector, clients: int, duration: float) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    replies = Replies(nc, col)
    await replies.start()

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            key, jid, fut = col.expect()
            try:
                await replies.send(key, jid)
                await asyncio.wait_for(fut, 10)  # the decision, or an error reply
                lat.append(col.latency[jid])
            except Exception:
                errors += 1

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - t
    return {
        "mode": "closed",
        "clients": clients,
        "jobs": len(lat),
        "jobs_per_s": round(len(lat) / elapsed, 1),
        "errors": errors,
        **percentiles(lat),
    }


class Replies:
    """Sends ``job.submit`` requests with their replies on one wildcard inbox, as nats-py's
    own request multiplexing does, but without a task, future and timer per request: at
    1,000 requests/s those cost the load generator (on the same two cores) more CPU than
    the gateway spends answering. Replies are counted; an error reply, or the server's
    ``503`` no-responders status, is an error, and wakes the job's waiter if it has one."""

    def __init__(self, nc: Client, col: Collector) -> None:
        self.nc = nc
        self.col = col
        self.prefix = nc.new_inbox()
        self.jobs: dict[str, str] = {}
        self.ok = 0
        self.errors = 0
        self._n = 0

    async def start(self) -> None:
        await direct.subscribe(self.nc, self.prefix + ".*", self.on)

    async def send(self, key: str, jid: str) -> None:
        self._n += 1
        reply = f"{self.prefix}.{self._n}"
        self.jobs[reply] = jid
        await self.nc.publish(s.JOB_SUBMIT, body(key), reply=reply)

    def on(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        jid = self.jobs.pop(subject.decode(), None)
        if not headers or (_ERROR_CODE not in headers and not headers.startswith(b"NATS/1.0 503")):
            self.ok += 1
            return
        self.errors += 1
        fut = self.col.waiters.pop(jid, None) if jid else None
        if fut is not None and not fut.done():
            fut.set_exception(RuntimeError(f"job.submit failed: {headers!r}"))


async def open_loop(nc: Client, col: Collector, rate: int, duration: float) -> dict[str, Any]:
    sent: list[str] = []
    replies = Replies(nc, col)
    await replies.start()

    tick = 0.005
    t_start = time.perf_counter()
    n_due = 0
    while True:
        now = time.perf_counter()
        if now - t_start >= duration:
            break
        due = int((now - t_start) * rate)
        while n_due < due:
            key = uuid.uuid4().hex
            jid = job_id_for(key)
            col.start[jid] = t_start + n_due / rate  # when it was due, not when it was sent
            sent.append(jid)
            await replies.send(key, jid)
            n_due += 1
        await asyncio.sleep(tick)
    # wait (bounded) for the decisions still in flight
    deadline = time.perf_counter() + 15
    while time.perf_counter() < deadline and any(j not in col.latency for j in sent[-200:]):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    end = max((col.start[j] + col.latency[j] for j in sent if j in col.latency), default=t_start + duration)
    lat = [col.latency[j] for j in sent if j in col.latency]
    missing = sum(1 for j in sent if j not in col.latency)
    return {
        "mode": "open",
        "offered_per_s": rate,
        "jobs": len(lat),
        "jobs_per_s": round(len(lat) / max(duration, end - t_start), 1),
        "errors": max(missing, replies.errors + len(replies.jobs)),
        **percentiles(lat),
        "_lat": lat,
    }


async def warm_up(nc: Client, col: Collector) -> None:
    """Wait until placement has the fleet: a probe job gets decided."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        key, jid, fut = col.expect()
        await nc.request(s.JOB_SUBMIT, body(key), timeout=10)
        try:
            await asyncio.wait_for(fut, 5)
        except TimeoutError:
            continue
        if jid not in col.failed:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("placement never decided a probe job")


async def gateway_alone(duration: float) -> dict[str, Any]:
    async with system(["gateway"]) as (_, nc):
        done = 0
        errors = 0
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop_at:
                try:
                    r = await nc.request(s.JOB_SUBMIT, body(uuid.uuid4().hex), timeout=10)
                    if r.headers and s.ERROR_CODE_HEADER in r.headers:
                        errors += 1
                    else:
                        done += 1
                except Exception:
                    errors += 1

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(256)))
        return {"requests_per_s": round(done / (time.perf_counter() - t), 1), "errors": errors, "clients": 256}


def plot(runs: list[dict[str, Any]], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        lat = sorted(r["_lat"])
        if not lat:
            continue
        ys = [i / len(lat) for i in range(len(lat))]
        ax.plot([x * 1000 for x in lat], ys, label=f"{r['offered_per_s']} jobs/s offered")
    ax.set_xscale("log")
    ax.set_xlabel("submit → placement.decided latency (ms, log)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(f"End-to-end latency CDF, {NODES} nodes, open loop")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


async def run() -> dict[str, Any]:
    result: dict[str, Any] = {"nodes": NODES, "closed": [], "open": []}
    async with system(SERVICES, sim_nodes=NODES, sim_interval=5.0) as (sysm, nc):
        col = Collector()
        await col.subscribe(nc)
        await warm_up(nc, col)
        usage0 = sysm.usage()
        for c in CLIENTS:
            result["closed"].append(await closed_loop(nc, col, c, CLOSED_S))
        for rate in RATES:
            result["open"].append(await measured_open_loop(sysm, nc, col, rate))
        result["footprint"] = _delta(usage0, sysm.usage())
        result["services"] = sorted(sysm.procs)
    result["cdf_png"] = plot(result["open"], "bench-results/pipeline-latency-cdf.png")
    for r in result["open"]:
        r.pop("_lat", None)
    result["gateway_alone"] = await gateway_alone(CLOSED_S)
    return result


async def measured_open_loop(sysm: System, nc: Client, col: Collector, rate: int) -> dict[str, Any]:
    """:func:`open_loop` plus each process's CPU µs per job and the steal share meanwhile."""
    before, me, steal = sysm.usage(), _own_cpu(), Steal()
    r = await open_loop(nc, col, rate, OPEN_S)
    r["cpu_us_per_job"] = _per_job(before, sysm.usage(), _own_cpu() - me, r["jobs"])
    r["steal_pct"] = steal.pct()
    return r


def cpu_table(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: CPU µs per job of each process, one column per open-loop run."""
    runs = [x for x in runs if x.get("cpu_us_per_job")]
    if not runs:
        return []
    procs = [*sorted({k for x in runs for k in x["cpu_us_per_job"]} - {"total"}), "total"]
    return table(
        ["process", *(f"{x['offered_per_s']}/s" for x in runs)],
        ([k, *(x["cpu_us_per_job"].get(k, "") for x in runs)] for k in procs),
    )


def _own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _per_job(
    a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], client_s: float, jobs: int
) -> dict[str, float]:
    """CPU µs per decided job of each process during one run (the node fleet's own load
    included), and of this load generator as ``client``: where the time goes per job."""
    out = {k: round(1e6 * (v["cpu_s"] - a.get(k, {}).get("cpu_s", 0.0)) / max(1, jobs)) for k, v in b.items()}
    out["client"] = round(1e6 * client_s / max(1, jobs))
    out["total"] = sum(out.values())
    return out


def _delta(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        k: {"cpu_s": round(v["cpu_s"] - a.get(k, {}).get("cpu_s", 0.0), 2), "peak_rss_mb": v["peak_rss_mb"]}
        for k, v in b.items()
    }


def _latencies(x: dict[str, Any]) -> list[object]:
    return [x["jobs_per_s"], x["p50_ms"], x["p90_ms"], x["p99_ms"], x["max_ms"], x["errors"]]


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"### End-to-end placement ({r['nodes']} nodes; services: {', '.join(r.get('services', []))})",
        "",
        *table(
            ["load", "jobs/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "steal %"],
            [
                *([f"closed, {x['clients']} clients", *_latencies(x), ""] for x in r["closed"]),
                *([f"open, {x['offered_per_s']}/s offered", *_latencies(x), x.get("steal_pct", "")] for x in r["open"]),
            ],
        ),
    ]
    cpu = cpu_table(r["open"])
    if cpu:
        lines += ["", "CPU µs per decided job, by process (open loop; includes the node fleet's own load):", "", *cpu]
    g = r["gateway_alone"]
    lines += [
        "",
        f"Gateway alone (`job.submit` until the JetStream ack, 256 clients): **{g['requests_per_s']} req/s**, "
        f"{g['errors']} errors",
        "",
        *table(
            ["process", "CPU s (whole run)", "peak RSS MiB"],
            ([k, v["cpu_s"], v["peak_rss_mb"]] for k, v in sorted(r.get("footprint", {}).items())),
        ),
    ]
    return "\n".join(lines)
