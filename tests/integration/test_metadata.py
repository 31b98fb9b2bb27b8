"""The metadata service as a real process against real nats-server and PostgreSQL:
events published to the streams (reordered, duplicated) -> job.get / job.list / job.events / node.list."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from services.metadata.adapters import Database
from tests.support.api import all_jobs, nodes_listed, request, start_metadata
from tests.support.events import SPEC, lifecycle, node_status, publish
from tests.support.servers import Spawn
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def job_state(nc: Client, job_id: str) -> str | None:
    code, body = await request(nc, s.JOB_GET, {"job_id": job_id})
    return body["state"] if code == 200 else None


T0 = datetime(2025, 1, 1, tzinfo=UTC)


async def test_out_of_order_and_duplicated_events_project_to_the_right_record(
    nc: Client, services: Spawn, database_url: str
) -> None:
    js = nc.jetstream()
    await start_metadata(nc, services, database_url)
    submitted, accepted, decided_ = lifecycle("job-a", T0)
    # the decision (PLACEMENTS) arrives before the job (JOBS) exists
    await publish(js, [decided_])
    await eventually(lambda: _state_is(nc, "job-a", "placed"), what="placed from the decision alone")
    await publish(js, [accepted, submitted])
    await publish(js, [submitted, accepted, decided_], redeliver=True)  # same event_ids again
    await eventually(lambda: _spec_known(nc, "job-a"), what="spec projected")
    code, rec = await request(nc, s.JOB_GET, {"job_id": "job-a"})
    assert code == 200
    assert rec["state"] == "placed" and rec["reason"] is None
    assert [h["state"] for h in rec["history"]] == ["submitted", "accepted", "placed"]
    assert rec["spec"]["resources"] == {"cpu": 1.5, "memory_mb": 512, "gpu": 0}
    assert [a["node_id"] for a in rec["placement"]["assignments"]] == ["n1", "n2"]
    assert [c["node_id"] for c in rec["placement"]["candidates"]] == ["n1", "n2"]
    assert rec["instances"] == [] and rec["submitted_at"].startswith("2025-01-01T00:00:00")
    # job.events: each event once, oldest first, as published
    code, body = await request(nc, s.JOB_EVENTS, {"job_id": "job-a"})
    assert code == 200
    assert [e["type"] for e in body["events"]] == ["job.submitted", "job.accepted", "placement.decided"]
    # then cancelled: cancel requested + released, the release first
    await publish(
        js,
        [
            ev.PlacementReleased(event_id="job-a:placement.released", job_id="job-a", at=T0 + timedelta(seconds=2)),
            ev.JobCancelRequested(
                event_id="job-a:job.cancel_requested", job_id="job-a", at=T0 + timedelta(seconds=1), reason="asked"
            ),
        ],
    )
    await eventually(lambda: _state_is(nc, "job-a", "cancelled"), what="cancelled")
    async with await _connect(database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE job_id = 'job-a'") == 5


async def test_node_list_shows_last_status_and_reservations(nc: Client, services: Spawn, database_url: str) -> None:
    js = nc.jetstream()
    await start_metadata(nc, services, database_url)
    now = datetime.now(UTC)
    # statuses of n1 arrive newest first: the older one must not win (statuses are written every
    # node_flush_s, the last to arrive in a period counts; across periods the newest by its time)
    await publish(js, [node_status("n1", now, cpu_free=5.0)])
    await nodes_listed(nc, "n1")
    await publish(js, [node_status("n1", now - timedelta(seconds=1), cpu_free=1.0)])
    await publish(js, [node_status("n2", now - timedelta(minutes=5))])
    await nodes_listed(nc, "n2")  # arrived after n1's older status: that one was flushed too
    await publish(js, lifecycle("job-b", now))
    await publish(js, lifecycle("job-c", now, nodes=("n1", "n3")))

    async def reserved() -> dict[str, Any]:
        code, body = await request(nc, s.NODE_LIST, {})
        assert code == 200
        return {n["node_id"]: n for n in body["nodes"]}

    async def both_jobs_reserved() -> bool:
        n = await reserved()
        return "n1" in n and n["n1"]["reserved"]["replicas"] == 2

    await eventually(both_jobs_reserved, what="reservations of job-b and job-c on n1")
    nodes = await reserved()
    assert sorted(nodes) == ["n1", "n2"]  # n3 never reported a status
    n1 = nodes["n1"]
    assert n1["cpu_free"] == 5.0 and n1["active"] is True and n1["state"] == "active"
    assert n1["reserved"] == {"cpu": 3.0, "memory_mb": 1024, "gpu": 0, "replicas": 2}
    assert nodes["n2"]["active"] is False  # its last status is older than the TTL
    await publish(js, [ev.PlacementReleased(event_id="job-b:placement.released", job_id="job-b", at=now)])

    async def job_b_released() -> bool:
        return (await reserved())["n1"]["reserved"]["replicas"] == 1

    await eventually(job_b_released, what="job-b released")
    assert (await reserved())["n2"]["reserved"] == {"cpu": 0.0, "memory_mb": 0, "gpu": 0, "replicas": 0}


BAD_REQUESTS = [
    (s.JOB_GET, {"job_id": "nope"}, 404, "job_id"),
    (s.JOB_EVENTS, {"job_id": "nope"}, 404, "job_id"),
    (s.JOB_GET, {}, 400, None),
    (s.JOB_GET, b"{not json", 400, None),
    (s.JOB_GET, {"job_id": "a b"}, 400, "job_id"),
    (s.JOB_LIST, {"limit": 0}, 400, "limit"),
    (s.JOB_LIST, {"limit": 1001}, 400, "limit"),
    (s.JOB_LIST, {"limit": "ten"}, 400, "limit"),
    (s.JOB_LIST, {"after": "garbage!"}, 400, "after"),
    (s.JOB_LIST, {"state": "sleeping"}, 400, "state"),
    (s.JOB_LIST, {"colour": 1}, 400, "colour"),
    (s.NODE_LIST, {"x": 1}, 400, "x"),
]


async def test_bad_requests_get_contract_errors(nc: Client, services: Spawn, database_url: str) -> None:
    await start_metadata(nc, services, database_url)
    before = await _error_counts(nc)
    for subject, body, code, field in BAD_REQUESTS:
        got, reply = await request(nc, subject, body)
        assert (got, reply["error"]["code"], reply["error"].get("field")) == (code, code, field), (subject, body)
    # an empty body is {} for the listing endpoints
    assert (await request(nc, s.JOB_LIST, b""))[0] == 200
    assert (await request(nc, s.NODE_LIST, b""))[0] == 200
    after = await _error_counts(nc)
    assert after[s.JOB_GET] - before[s.JOB_GET] == 4 and after[s.JOB_LIST] - before[s.JOB_LIST] == 6
    info = json.loads((await nc.request("$SRV.INFO.metadata", b"", timeout=2)).data)
    assert info["description"] and all(isinstance(e["metadata"], dict) for e in info["endpoints"])


async def test_pagination_over_2500_jobs_returns_each_once_while_jobs_are_added(
    nc: Client, services: Spawn, database_url: str
) -> None:
    js = nc.jetstream()
    await start_metadata(nc, services, database_url)
    first = [f"p{i:05d}" for i in range(2500)]
    await publish(js, [ev.JobSubmitted(event_id=f"{j}:job.submitted", job_id=j, at=T0, spec=SPEC) for j in first])

    async def all_there() -> bool:
        code, body = await request(nc, s.JOB_LIST, {"limit": 1, "state": "submitted"})
        return code == 200 and body["jobs"] and body["jobs"][0]["job_id"] == first[-1]

    await eventually(all_there, what="2500 jobs projected")
    # page through while more jobs arrive: the first 2500 each exactly once, newest first
    later = [f"q{i:05d}" for i in range(300)]
    adding = asyncio.create_task(
        publish(js, [ev.JobSubmitted(event_id=f"{j}:job.submitted", job_id=j, at=T0, spec=SPEC) for j in later])
    )
    seen = await all_jobs(nc, limit=97)
    await adding
    assert len(seen) == len(set(seen))
    assert [j for j in seen if j.startswith("p")] == first[::-1]
    assert set(seen) - set(first) <= set(later)
    # the state filter pages the same way, and the default page is 100
    await publish(js, lifecycle("p00007", T0)[1:])
    await eventually(lambda: _state_is(nc, "p00007", "placed"), what="p00007 placed")
    assert await all_jobs(nc, limit=1000, state="placed") == ["p00007"]
    code, body = await request(nc, s.JOB_LIST, {})
    assert code == 200 and len(body["jobs"]) == 100 and body["next"]


async def test_migrations_are_applied_once_when_instances_start_together(database_url: str) -> None:
    dbs = [Database(database_url) for _ in range(3)]
    for db in dbs:
        await db.open()
    try:
        applied = await asyncio.gather(*(db.migrate() for db in dbs))
        assert sorted(len(a) for a in applied) == [0, 0, 9]
        async with await _connect(database_url) as conn:
            rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in rows] == [
            (1, "init"),
            (2, "cache_tokens"),
            (3, "views_from_events"),
            (4, "reservations_in_jobs"),
            (5, "node_columns"),
            (6, "node_drains"),
            (7, "job_tenants"),
            (8, "retention"),
            (9, "node_columns_written"),
        ]
        assert await dbs[0].migrate() == []
    finally:
        for db in dbs:
            await db.close()


# --- helpers ---------------------------------------------------------------
async def _error_counts(nc: Client) -> dict[str, int]:
    stats = json.loads((await nc.request("$SRV.STATS.metadata", b"", timeout=2)).data)
    return {e["subject"]: e["num_errors"] for e in stats["endpoints"]}


async def _state_is(nc: Client, job_id: str, state: str) -> bool:
    return await job_state(nc, job_id) == state


async def _spec_known(nc: Client, job_id: str) -> bool:
    code, rec = await request(nc, s.JOB_GET, {"job_id": job_id})
    return code == 200 and rec["spec"] is not None and len(rec["history"]) == 3


class _Conn:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def __aenter__(self) -> asyncpg.Connection:
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()


async def _connect(url: str) -> _Conn:
    return _Conn(await asyncpg.connect(url))
