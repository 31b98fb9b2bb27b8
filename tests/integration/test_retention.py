"""Retention (issue #21) against real servers: stream limits from ``[retention]`` (old events age
out, a full stream drops its oldest and keeps taking jobs, a consumer lagging past the window is
told, limits reach streams created without them) and PostgreSQL
bounded (node history downsampled, ended jobs forgotten after ``jobs_keep_s``, live ones kept)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client
from nats.js import api as js_api

from schemas import events as ev
from schemas import subjects as s
from services.metadata.adapters import RETENTION_LOCK, Database, FleetWriter
from services.metadata.fleet import Fleet
from services.metadata.projector import Projector
from services.metadata.retention import Retention
from services.runtime.config import RetentionConf
from services.runtime.delivery import Delivery
from services.runtime.streams import aged_out_unread, ensure_consumer, ensure_streams
from tests.support.api import DEMO, all_jobs, request, start_metadata
from tests.support.events import lifecycle, node_status, publish
from tests.support.servers import Spawn, count
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def retention_toml(tmp_path: Path, **retention: float | int) -> Path:
    """A SCHEDULER_CONFIG with the given ``[retention]`` (and a short idempotency window, which
    would otherwise be clamped to a few-second ``events_max_age_s``)."""
    path = tmp_path / "scheduler.toml"
    lines = [
        'technologies = ["docker", "unikernel"]',
        "[timeouts]",
        "idempotency_window_s = 1.0",
        "[retention]",
        *(f"{k} = {v}" for k, v in retention.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_default_retention_is_applied_to_every_event_stream(nc: Client) -> None:
    js = nc.jetstream(timeout=10)
    await ensure_streams(js, retention=RetentionConf())
    want = RetentionConf()
    for spec in (s.JOBS, s.PLACEMENTS, s.CLUSTERS, s.TENANT_PLACEMENTS, s.DEADLETTERS):
        cfg = (await js.stream_info(spec.name)).config
        assert cfg.max_age == want.events_max_age_s, spec.name
        assert cfg.max_bytes == want.stream_max_bytes, spec.name
        assert cfg.discard == js_api.DiscardPolicy.OLD, spec.name
    nodes = (await js.stream_info(s.NODES.name)).config
    assert nodes.max_age == want.events_max_age_s and nodes.max_msgs_per_subject == 1
    assert nodes.max_bytes in (None, -1) and nodes.discard != js_api.DiscardPolicy.NEW
    jobs = (await js.stream_info(s.JOBS.name)).config
    assert jobs.duplicate_window == s.JOBS.duplicate_window_s  # 24 h fits in 7 days: not clamped


async def test_limits_reach_a_stream_created_without_them(nc: Client) -> None:
    js = nc.jetstream(timeout=10)
    await ensure_streams(js, [s.CLUSTERS])  # as an older version left it: no limits
    assert (await js.stream_info(s.CLUSTERS.name)).config.max_age in (None, 0)
    await js.publish(s.CLUSTER_PROVISIONING, b"{}")
    retention = RetentionConf(events_max_age_s=3600.0, stream_max_bytes=1024 * 1024)
    await ensure_streams(js, [s.CLUSTERS], retention=retention)
    info = await js.stream_info(s.CLUSTERS.name)
    assert info.config.max_age == 3600.0 and info.config.max_bytes == 1024 * 1024
    assert info.config.discard == js_api.DiscardPolicy.OLD
    assert info.state.messages == 1  # the update kept what was stored


async def test_old_events_age_out_and_the_window_is_clamped(nc: Client) -> None:
    js = nc.jetstream(timeout=10)
    retention = RetentionConf(events_max_age_s=2.0)
    await ensure_streams(js, [s.JOBS, s.NODES], retention=retention)
    jobs = (await js.stream_info(s.JOBS.name)).config
    assert jobs.duplicate_window == 2.0  # clamped to max_age (nats-server refuses more)
    await js.publish(s.JOB_CANCEL_REQUESTED, b"{}")
    await js.publish(f"{s.NODE_STATUS_ALL.removesuffix('*')}n1", b"{}")

    async def empty() -> bool:
        jobs_left = (await js.stream_info(s.JOBS.name)).state.messages
        nodes_left = (await js.stream_info(s.NODES.name)).state.messages
        return jobs_left == 0 and nodes_left == 0

    await eventually(empty, timeout=10.0, what="JOBS and NODES emptied by max_age")


async def test_a_full_stream_drops_its_oldest_and_a_lagging_consumer_is_told(nc: Client) -> None:
    js = nc.jetstream(timeout=10)
    await ensure_streams(js, [s.JOBS], retention=RetentionConf(stream_max_bytes=4096))
    await ensure_consumer(js, s.INTAKE_JOBS)  # a durable that reads nothing meanwhile
    for i in range(100):
        await js.publish(s.JOB_SUBMITTED, b"x" * 200, headers={"Nats-Msg-Id": f"m{i}"})  # never refused
    info = await js.stream_info(s.JOBS.name)
    assert info.state.last_seq == 100 and info.state.first_seq > 1 and info.state.bytes <= 4096
    assert await aged_out_unread(js, s.INTAKE_JOBS) == info.state.first_seq - 1


async def test_submit_into_a_full_stream_still_answers(nc: Client, services: Spawn, tmp_path: Path) -> None:
    path = retention_toml(tmp_path, stream_max_bytes=4096)
    await services("gateway", env={"SCHEDULER_CONFIG": str(path)})
    js = nc.jetstream(timeout=10)
    assert (await js.stream_info(s.JOBS.name)).config.max_bytes == 4096
    for _ in range(40):  # far more than 4 KiB of job.submitted
        reply = await nc.request(s.JOB_SUBMIT, DEMO, timeout=10)
        assert not (reply.headers or {}).get(s.ERROR_HEADER), reply.data
        assert json.loads(reply.data)["state"] == "submitted"
    assert (await js.stream_info(s.JOBS.name)).state.first_seq > 1


# --- PostgreSQL bounded ----------------------------------------------------------
T0 = datetime(2025, 6, 1, tzinfo=UTC)
_seq = iter(range(1, 10**9))


def items(events: Sequence[ev.Event]) -> list[tuple[ev.Event, Delivery]]:
    """Events as a consumer hands them over: decoded, with their JetStream delivery."""
    from nats.aio.msg import Msg

    out: list[tuple[ev.Event, Delivery]] = []
    for e in events:
        n = next(_seq)
        stream = s.NODES.name if isinstance(e, ev.NodeStatus) else s.JOBS.name
        msg = Msg(_client=None, subject=ev.subject_of(e), reply=f"$JS.ACK.{stream}.metadata.1.{n}.{n}.0.0")  # type: ignore[arg-type]
        msg.data = ev.encode(e)
        out.append((e, Delivery(msg)))
    return out


def ended(job_id: str, at: datetime) -> list[ev.JobEvent]:
    """A shared job placed at ``at``, then cancelled (requested and released) a minute later."""
    return [
        *lifecycle(job_id, at),
        ev.JobCancelRequested(
            event_id=f"{job_id}:job.cancel_requested", job_id=job_id, at=at + timedelta(minutes=1), reason="test"
        ),
        ev.PlacementReleased(
            event_id=f"{job_id}:placement.released", job_id=job_id, at=at + timedelta(minutes=1, seconds=1)
        ),
    ]


async def flushed(fleet: Fleet, statuses: Sequence[ev.NodeStatus], every: int = 1) -> None:
    """Hand ``statuses`` to ``fleet`` as the subscription does, flushing after each ``every`` of them."""
    for i, status in enumerate(statuses, 1):
        fleet.store.put(s.node_status_subject(status.node_id).encode(), b"", ev.encode(status))
        if i % every == 0 or i == len(statuses):
            await fleet.flush()


async def test_node_history_is_downsampled_under_a_burst(db: Database, database_url: str) -> None:
    writer = FleetWriter(db)
    fleet = Fleet(writer, flush_s=10.0)
    try:
        # 10 minutes of a status a second from n1 (figures changing every time), a flush every 50
        burst = [node_status("n1", T0 + timedelta(seconds=i), cpu_free=float(i % 8)) for i in range(600)]
        await flushed(fleet, burst, every=50)
        # then 10 minutes of the same figures every second from n2: one row, nothing changed
        await flushed(fleet, [node_status("n2", T0 + timedelta(seconds=i)) for i in range(600)], every=50)
    finally:
        await writer.close()
    n1 = await count(database_url, "SELECT count(*) FROM node_history WHERE node_id = 'n1'")
    assert 1 <= n1 <= 11  # at most one a minute (and the first)
    assert await count(database_url, "SELECT count(*) FROM node_history WHERE node_id = 'n2'") == 1
    assert await count(database_url, "SELECT count(*) FROM events WHERE job_id IS NULL") == 0  # no row per status
    latest = await count(
        database_url, "SELECT count(*) FROM nodes WHERE node_id = 'n1' AND at = $1", T0 + timedelta(seconds=599)
    )
    assert latest == 1  # current state: the newest status


async def test_ended_jobs_are_forgotten_after_the_window_and_live_ones_kept(db: Database, database_url: str) -> None:
    p = Projector(db)
    try:
        old_ended = [f"old-{i}" for i in range(5)]
        for job_id in old_ended:
            await p.project(items(ended(job_id, T0)))
        await p.project(items(lifecycle("live", T0)))  # placed long ago, still running
        await p.project(items(ended("recent", T0 + timedelta(days=9))))
        writer = FleetWriter(db)
        fleet = Fleet(writer, flush_s=10.0)
        await flushed(fleet, [node_status("n1", T0)])  # one history row each (a flush keeps its newest)
        await flushed(fleet, [node_status("n1", T0 + timedelta(days=9), cpu_free=1.0)])
        await writer.close()
        assert p.cache.get("old-0") is not None
        conf = RetentionConf(jobs_keep_s=5 * 86400.0, node_history_keep_s=86400.0, cleanup_every_s=1.0)
        now = T0 + timedelta(days=10)
        retention = Retention(db, conf, p.cache.discard, batch=2, clock=lambda: now)  # three batches of jobs
        swept = await retention.once()
        assert swept is not None
        assert (swept.jobs, swept.job_events, swept.history) == (5, 25, 1)
        assert p.cache.get("old-0") is None  # forgotten by this instance's cache too
        for job_id in old_ended:
            assert await count(database_url, "SELECT count(*) FROM jobs WHERE job_id = $1", job_id) == 0
            assert await count(database_url, "SELECT count(*) FROM events WHERE job_id = $1", job_id) == 0
        for job_id, n in (("live", 3), ("recent", 5)):
            assert await count(database_url, "SELECT count(*) FROM jobs WHERE job_id = $1", job_id) == 1
            assert await count(database_url, "SELECT count(*) FROM events WHERE job_id = $1", job_id) == n
        assert await count(database_url, "SELECT count(*) FROM nodes") == 1  # current state is never deleted
        again = await retention.once()
        assert again is not None and (again.jobs, again.history) == (0, 0)
    finally:
        await p.close()


async def test_one_instance_sweeps_at_a_time(db: Database, database_url: str) -> None:
    conf = RetentionConf()
    retention = Retention(db, conf, lambda ids: None)
    holder = await asyncpg.connect(database_url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK)
        assert await retention.once() is None  # another instance is sweeping
        await holder.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)
        assert await retention.once() is not None
    finally:
        await holder.close()


async def test_the_ended_jobs_query_uses_its_index(db: Database, database_url: str) -> None:
    from services.metadata import sql_jobs

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                f"EXPLAIN SELECT job_id FROM jobs WHERE {sql_jobs.ENDED} AND updated_at < $1 "
                "ORDER BY updated_at LIMIT 1000",
                T0,
            )
        )
    finally:
        await conn.close()
    assert "jobs_ended" in plan, plan


async def test_a_forgotten_job_answers_404_and_the_listing_keeps_the_rest(
    nc: Client, services: Spawn, database_url: str, tmp_path: Path
) -> None:
    path = retention_toml(tmp_path, jobs_keep_s=86400, cleanup_every_s=0.2)
    await start_metadata(nc, services, database_url, SCHEDULER_CONFIG=str(path))
    js = nc.jetstream()
    now = datetime.now(UTC)
    await publish(js, ended("gone", now - timedelta(days=3)))  # ended three days ago: forgotten
    await publish(js, lifecycle("running", now - timedelta(days=3)))  # live, however old
    await publish(js, ended("fresh", now - timedelta(hours=1)))  # ended inside the window

    async def forgotten() -> bool:
        return (await request(nc, s.JOB_GET, {"job_id": "gone"}))[0] == 404 and (
            await request(nc, s.JOB_GET, {"job_id": "fresh"})
        )[0] == 200

    await eventually(forgotten, timeout=30, what="the old ended job forgotten")
    for subject in (s.JOB_GET, s.JOB_EVENTS):
        code, body = await request(nc, subject, {"job_id": "gone"})
        assert code == 404
        assert body["error"]["message"] == "unknown job gone, or one that ended more than 1 day ago and was forgotten"
    code, rec = await request(nc, s.JOB_GET, {"job_id": "running"})
    assert code == 200 and rec["state"] == "placed"
    assert sorted(await all_jobs(nc, limit=100)) == ["fresh", "running"]
