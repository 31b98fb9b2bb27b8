"""Metadata projection throughput: how fast a backlog of real events is projected into PostgreSQL.

Starts its own nats-server (the repo's nats.conf) and PostgreSQL (services.devstack), pre-fills
the streams with a realistic backlog, then starts ``python -m services.metadata`` and measures
the drain: from the moment its queries answer (schema migrated, consumers starting) until all
four durable ``metadata`` consumers have nothing pending or unacknowledged. The backlog, per job:

- every job: ``job.submitted``, ``job.accepted``, ``placement.decided`` (shared: 2 replicas
  over 500 nodes, 10 candidates; dedicated: instance types);
- 20% cancelled (``job.cancel_requested``, ``placement.released``), 10% dedicated and completed
  (``cluster.provisioning``, ``cluster.provisioned``, ``job.completed``, ``cluster.torn_down``,
  ``placement.released``), 5% rejected instead of accepted;
- node status: 500 nodes (the NODES stream keeps the last status of each).

Each batch size gets a fresh database and fresh consumers over the same streams. Set
``BENCH_METADATA_JOBS`` (default 12000) and ``BENCH_METADATA_BATCHES`` (default "1000,250").
After the drain the projection is checked (events and jobs counted in PostgreSQL).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Constraints, JobSpec, Resources, Workload
from services.devstack import NatsServer, spawn_service
from tests.support.procs import TICK, cpu_seconds
from tests.support.servers import create_database
from tests.support.system import servers_only
from tests.support.waiting import eventually

NODES = 500
SEED = 7


def _spec(rng: random.Random, dedicated: bool) -> JobSpec:
    return JobSpec(
        name=f"sampler-{rng.randint(0, 10**6)}",
        technology="docker",
        replicas=2,
        resources=Resources(cpu=rng.choice([0.5, 1.0, 2.0]), memory_mb=rng.choice([512, 1024, 4096])),
        constraints=Constraints(labels={"zone": "eu-central-1a"} if rng.random() < 0.3 else {}),
        cluster="dedicated" if dedicated else "shared",
        workload=Workload(image="registry/sampler:1.2", args=["--samples", "1000"]),
        strategy="best_fit",
        max_runtime_s=3600,
    )


def backlog(jobs: int, t0: datetime) -> list[ev.Event]:
    """A deterministic, realistic event backlog for ``jobs`` jobs plus node statuses."""
    rng = random.Random(SEED)
    out: list[ev.Event] = []
    for n in range(NODES):
        out.append(
            ev.NodeStatus(
                node_id=f"node-{n:04d}",
                at=t0,
                state="active",
                technologies=["docker", "wasm"],
                cpu_cores=32,
                cpu_free=float(rng.randint(0, 32)),
                memory_mb=131072,
                memory_free_mb=rng.randint(0, 131072),
                labels={"zone": f"eu-central-1{'abc'[n % 3]}"},
            )
        )
    for i in range(jobs):
        job_id = uuid.UUID(int=rng.getrandbits(128)).hex
        at = t0 + timedelta(milliseconds=i)
        roll = rng.random()
        dedicated = 0.05 <= roll < 0.15
        spec = _spec(rng, dedicated)

        def eid(kind: str, job_id: str = job_id) -> str:
            return ev.event_id_for(job_id, kind)

        out.append(ev.JobSubmitted(event_id=eid(s.JOB_SUBMITTED), job_id=job_id, at=at, spec=spec))
        if roll < 0.05:
            out.append(ev.JobRejected(event_id=eid(s.JOB_REJECTED), job_id=job_id, at=at, reason="quota"))
            continue
        out.append(ev.JobAccepted(event_id=eid(s.JOB_ACCEPTED), job_id=job_id, at=at, spec=spec, submitted_at=at))
        nodes = rng.sample(range(NODES), 10)
        if dedicated:
            assignments = [ev.Assignment(replica=r, instance_type="m5.large") for r in range(2)]
            candidates = [ev.Candidate(instance_type="m5.large", vcpu=2, memory_mb=8192, price_hourly=0.096)]
        else:
            assignments = [ev.Assignment(replica=r, node_id=f"node-{nodes[r]:04d}") for r in range(2)]
            candidates = [
                ev.Candidate(node_id=f"node-{n:04d}", cpu_free=float(rng.randint(2, 32)), memory_free_mb=65536)
                for n in nodes
            ]
        out.append(
            ev.PlacementDecided(
                event_id=eid(s.PLACEMENT_DECIDED),
                job_id=job_id,
                at=at,
                cluster=spec.cluster,
                technology="docker",
                strategy="best_fit",
                assignments=assignments,
                candidates=candidates,
                resources=spec.resources,
            )
        )
        end = at + timedelta(seconds=30)
        if dedicated:
            instances = [
                ev.Instance(instance_id=f"i-{job_id[:12]}{r}", instance_type="m5.large", replica=r) for r in range(2)
            ]
            running = [
                ev.Instance(
                    instance_id=i.instance_id,
                    instance_type=i.instance_type,
                    replica=i.replica,
                    state="running",
                    private_ip=f"10.0.{i.replica}.{rng.randint(1, 254)}",
                )
                for i in instances
            ]
            out += [
                ev.ClusterProvisioning(event_id=eid(s.CLUSTER_PROVISIONING), job_id=job_id, at=at, instances=instances),
                ev.ClusterProvisioned(event_id=eid(s.CLUSTER_PROVISIONED), job_id=job_id, at=at, instances=running),
                ev.JobCompleted(event_id=eid(s.JOB_COMPLETED), job_id=job_id, at=end, outcome="succeeded"),
                ev.ClusterTornDown(
                    event_id=eid(s.CLUSTER_TORN_DOWN),
                    job_id=job_id,
                    at=end,
                    instance_ids=[i.instance_id for i in instances],
                ),
                ev.PlacementReleased(event_id=eid(s.PLACEMENT_RELEASED), job_id=job_id, at=end),
            ]
        elif roll > 0.8:
            out += [
                ev.JobCancelRequested(event_id=eid(s.JOB_CANCEL_REQUESTED), job_id=job_id, at=end, reason="user"),
                ev.PlacementReleased(event_id=eid(s.PLACEMENT_RELEASED), job_id=job_id, at=end),
            ]
    return out


async def _prefill(js: JetStreamContext, events: list[ev.Event], chunk: int = 2000) -> None:
    for i in range(0, len(events), chunk):
        futures = [
            await js.publish_async(
                ev.commit_subject_of(e), ev.encode(e), headers={s.MSG_ID_HEADER: e.event_id} if e.event_id else None
            )
            for e in events[i : i + chunk]
        ]
        await asyncio.gather(*futures)


async def _stored(js: JetStreamContext) -> int:
    return sum([(await js.stream_info(c.stream)).state.messages for c in s.METADATA_CONSUMERS])


async def _drained(js: JetStreamContext) -> bool:
    for c in s.METADATA_CONSUMERS:
        try:
            info = await js.consumer_info(c.stream, c.durable)
        except NotFoundError:
            return False
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def _queries_answer(nc: Client) -> bool:
    try:
        reply = await nc.request(s.JOB_LIST, b'{"limit": 1}', timeout=1)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False
    return not (reply.headers and s.ERROR_CODE_HEADER in reply.headers)


def _tree_cpu_s(root: int | None) -> float:
    """CPU seconds of a process and its direct children (the postmaster and its backends)."""
    if root is None:
        return 0.0
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == root or int(parts[1]) == root:
            total += (int(parts[11]) + int(parts[12])) / TICK
    return total


async def _one_run(
    nc: Client,
    js: JetStreamContext,
    server: NatsServer,
    pg_pid: int | None,
    admin_url: str,
    env: dict[str, str],
    batch: int,
    tmp: Path,
) -> dict[str, Any]:
    for c in s.METADATA_CONSUMERS:  # replay from the start
        try:
            await js.delete_consumer(c.stream, c.durable)
        except NotFoundError:
            pass
    db = f"bench_{batch}_{uuid.uuid4().hex[:6]}"
    url = await create_database(admin_url, db)
    total = await _stored(js)
    proc = spawn_service(
        "metadata", {**env, "DATABASE_URL": url, "METADATA_BATCH": str(batch)}, log_path=tmp / f"metadata-{batch}.log"
    )
    try:
        await eventually(lambda: _queries_answer(nc), 60, "metadata bench: metadata up", interval=0.02)
        cpu0, pg0, nats0 = cpu_seconds(proc.pid), _tree_cpu_s(pg_pid), _tree_cpu_s(server.pid)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        await eventually(lambda: _drained(js), 600, "metadata bench: drain", interval=0.02)
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        pg_cpu, nats_cpu = _tree_cpu_s(pg_pid) - pg0, _tree_cpu_s(server.pid) - nats0
    finally:
        proc.stop()
    conn = await asyncpg.connect(url)
    try:
        projected = await conn.fetchval("SELECT count(*) FROM events")
        jobs = await conn.fetchval("SELECT count(*) FROM jobs WHERE state IS NOT NULL")
        states = dict(await conn.fetch("SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state"))
    finally:
        await conn.close()
    return {
        "batch": batch,
        "events": total,
        "projected": projected,
        "jobs": jobs,
        "states": states,
        "seconds": round(elapsed, 3),
        "events_per_s": round(total / elapsed),
        "metadata_cpu_s": round(cpu, 2),
        "postgres_cpu_s": round(pg_cpu, 2),
        "nats_cpu_s": round(nats_cpu, 2),
        "metadata_cpu_us_per_event": round(cpu / total * 1e6),
        "postgres_cpu_us_per_event": round(pg_cpu / total * 1e6),
        "nats_cpu_us_per_event": round(nats_cpu / total * 1e6),
        "load_before": round(load0, 2),
    }


async def run() -> dict[str, Any]:
    jobs = int(os.environ.get("BENCH_METADATA_JOBS", "12000"))
    batches = [int(b) for b in os.environ.get("BENCH_METADATA_BATCHES", "1000,250").split(",") if b.strip()]
    async with servers_only("metadata") as b:
        js = b.nc.jetstream(timeout=30)
        events = backlog(jobs, datetime.now(UTC) - timedelta(hours=1))
        t = time.perf_counter()
        await _prefill(js, events)
        prefill_s = time.perf_counter() - t
        pg_pid = b.pg.pid if b.pg else None
        runs = [await _one_run(b.nc, js, b.nats, pg_pid, b.admin_url, b.env, n, b.tmp) for n in batches]
    return {
        "jobs": jobs,
        "published": len(events),
        "stored": runs[0]["events"] if runs else 0,
        "prefill_s": round(prefill_s, 2),
        "cores": os.cpu_count(),
        "runs": runs,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "### metadata: projection drain rate",
        "",
        f"Backlog of {result['stored']} stored events ({result['jobs']} jobs; {result['published']} published, "
        f"node status kept last-per-node) on {result['cores']} cores; `python -m tests.bench metadata`.",
        "",
        "| batch | events | seconds | events/s | CPU s: metadata / PostgreSQL / nats-server | "
        "CPU µs/event: metadata / PostgreSQL / nats-server | load avg before | jobs projected |",
        "|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['batch']} | {r['events']} | {r['seconds']} | **{r['events_per_s']}** | "
            f"{r['metadata_cpu_s']} / {r['postgres_cpu_s']} / {r['nats_cpu_s']} | "
            f"{r['metadata_cpu_us_per_event']} / {r['postgres_cpu_us_per_event']} / {r['nats_cpu_us_per_event']} | "
            f"{r['load_before']} | {r['jobs']} |"
        )
    return "\n".join(lines)
