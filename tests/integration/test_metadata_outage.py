"""PostgreSQL stopped and restarted under the metadata service, mid-stream: queries answer 503, nothing is
acked, nakked to death or dead-lettered meanwhile, and afterwards the projection catches up to the state
a projection without the outage has."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from services.devstack import Postgres
from services.metadata import domain
from tests.support.api import all_jobs, request, start_metadata
from tests.support.events import lifecycle, publish
from tests.support.servers import Spawn
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[Postgres]:
    """A PostgreSQL of this test alone (the session's one is shared, and this test stops it)."""
    pg = Postgres(tmp_path / "pg")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def cancelled(job_id: str, at: datetime) -> list[ev.JobEvent]:
    return [
        ev.JobCancelRequested(event_id=f"{job_id}:job.cancel_requested", job_id=job_id, at=at, reason="outage test"),
        ev.PlacementReleased(event_id=f"{job_id}:placement.released", job_id=job_id, at=at + timedelta(seconds=1)),
    ]


async def test_postgres_outage_mid_stream_loses_nothing_and_catches_up(
    nc: Client, services: Spawn, own_postgres: Postgres
) -> None:
    js = nc.jetstream()
    await start_metadata(nc, services, own_postgres.dsn, METADATA_BATCH="50")
    t0 = datetime.now(UTC)
    before = [f"a{i:03d}" for i in range(100)]
    during = [f"b{i:03d}" for i in range(200)]
    published: list[ev.JobEvent] = []
    for j in before:
        published += lifecycle(j, t0)
    await publish(js, published)

    async def placed(job_id: str) -> bool:
        code, body = await request(nc, s.JOB_GET, {"job_id": job_id})
        return code == 200 and body["state"] == "placed"

    await eventually(lambda: placed(before[-1]), what="first wave projected")

    await asyncio.to_thread(own_postgres.stop)
    wave: list[ev.JobEvent] = []
    for j in during:
        wave += lifecycle(j, t0 + timedelta(seconds=5))
    for j in before[:10]:
        wave += cancelled(j, t0 + timedelta(seconds=10))
    await publish(js, wave)
    published += wave

    async def answers_503() -> bool:
        return (await request(nc, s.JOB_GET, {"job_id": before[0]}))[0] == 503

    await eventually(answers_503, what="queries answer 503 while PostgreSQL is down")
    code, body = await request(nc, s.JOB_LIST, {})
    assert code == 503 and body["error"]["code"] == 503

    async def held() -> bool:  # the second wave was fetched and is being held unacked
        info = await js.consumer_info(s.METADATA_JOBS.stream, s.METADATA_JOBS.durable)
        return info.num_ack_pending > 0

    await eventually(held, what="second wave held unacked")
    info = await js.consumer_info(s.METADATA_JOBS.stream, s.METADATA_JOBS.durable)
    assert info.delivered.stream_seq < (await js.stream_info(s.JOBS.name)).state.last_seq  # fetching paused

    await asyncio.to_thread(own_postgres.start)

    async def caught_up() -> bool:
        code, body = await request(nc, s.JOB_GET, {"job_id": during[-1]})
        if code != 200 or body["state"] != "placed":
            return False
        for spec in s.METADATA_CONSUMERS:
            c = await js.consumer_info(spec.stream, spec.durable)
            if c.num_pending or c.num_ack_pending:
                return False
        return True

    await eventually(caught_up, timeout=60, what="projection caught up after PostgreSQL came back")

    # the same state as a projection that never saw an outage: fold the published events
    expected: dict[str, str | None] = {}
    views: dict[str, domain.JobView] = {}
    for e in published:
        views[e.job_id] = domain.apply(views.get(e.job_id), e)
    for job_id, view in views.items():
        expected[job_id] = domain.derive(view).state
    listed = await all_jobs(nc, limit=1000)
    assert sorted(listed) == sorted(expected)
    for state in ("placed", "cancelled"):
        want = sorted(j for j, st in expected.items() if st == state)
        assert sorted(await all_jobs(nc, limit=1000, state=state)) == want
    assert len([j for j, st in expected.items() if st == "cancelled"]) == 10

    conn = await asyncpg.connect(own_postgres.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events") == len(published)
    finally:
        await conn.close()
    letters = await js.stream_info(s.DEADLETTERS.name)
    assert letters.state.messages == 0
