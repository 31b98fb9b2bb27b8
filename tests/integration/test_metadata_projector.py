"""The metadata projection (``Projector``) against a real PostgreSQL, without NATS: its view cache and
write tokens with two instances writing the same jobs, a cache too small to hold anything, redelivered
batches, and a failed write whose successor had been prepared on its (never committed) views."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from services.metadata import domain
from services.metadata.adapters import Database, Tx
from services.metadata.projector import Projector
from services.runtime.delivery import Delivery
from tests.support.events import SPEC, lifecycle

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, tzinfo=UTC)
_seq = itertools.count(1)


def items(events: Sequence[ev.Event]) -> list[tuple[ev.Event, Delivery]]:
    """Events as a consumer hands them over: decoded, with their JetStream delivery."""
    out: list[tuple[ev.Event, Delivery]] = []
    for e in events:
        n = next(_seq)
        stream = s.NODES.name if isinstance(e, ev.NodeStatus) else s.JOBS.name
        msg = Msg(_client=None, subject=ev.subject_of(e), reply=f"$JS.ACK.{stream}.metadata.1.{n}.{n}.0.0")  # type: ignore[arg-type]
        msg.data = ev.encode(e)
        out.append((e, Delivery(msg)))
    return out


def cancelled(job_id: str, at: datetime) -> list[ev.JobEvent]:
    return [
        ev.JobCancelRequested(event_id=f"{job_id}:job.cancel_requested", job_id=job_id, at=at, reason="test"),
        ev.PlacementReleased(event_id=f"{job_id}:placement.released", job_id=job_id, at=at + timedelta(seconds=1)),
    ]


async def rows(database_url: str) -> dict[str, dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        recs = await conn.fetch("SELECT job_id, state, reason, released, reservations FROM jobs")
    finally:
        await conn.close()
    return {r["job_id"]: {**dict(r), "reservations": json.loads(r["reservations"] or "null")} for r in recs}


def expected(events: Sequence[ev.JobEvent]) -> dict[str, dict[str, Any]]:
    """What the jobs rows must hold: the fold of every event, whoever projected it."""
    views: dict[str, domain.JobView] = {}
    for e in events:
        views[e.job_id] = domain.apply(views.get(e.job_id), e)
    out: dict[str, dict[str, Any]] = {}
    for job_id, v in views.items():
        state, reason = domain.state_of(v)
        res = [
            {"replica": r, "node_id": n, "cpu": x and x.cpu, "memory_mb": x and x.memory_mb, "gpu": x and x.gpu}
            for r, n, x in domain.reservations(v)
        ]
        out[job_id] = {
            "job_id": job_id,
            "state": state,
            "reason": reason,
            "released": v.released,
            "reservations": res if v.placement else None,
        }
    return out


async def test_two_instances_writing_the_same_jobs_converge(database_url: str) -> None:
    a, b = Database(database_url), Database(database_url)
    for d in (a, b):
        await d.open()
    await asyncio.gather(a.migrate(), b.migrate())
    pa, pb = Projector(a), Projector(b)
    try:
        jobs = [f"j{i:02d}" for i in range(20)]
        steps = {j: lifecycle(j, T0) + cancelled(j, T0 + timedelta(seconds=5)) for j in jobs}
        # each instance gets every other event of each job: both keep a view of every job in cache,
        # and each view goes stale at once because the other instance wrote the row since
        for k in range(5):
            pick = [steps[j][k] for j in jobs]
            await (pa if k % 2 == 0 else pb).project(items(pick))
        # and concurrently, the same jobs from both sides in one go
        more = [ev.JobCompleted(event_id=f"{j}:job.completed", job_id=j, at=T0, outcome="succeeded") for j in jobs]
        await asyncio.gather(pa.project(items(more[:10])), pb.project(items(more[5:])))
        assert pa.stats["conflicts"] > 0 and pb.stats["conflicts"] > 0
        all_events = [e for j in jobs for e in steps[j]] + more
        assert await rows(database_url) == expected(all_events)
        # a cached view that went stale is never written back over the other instance's events
        await pa.project(items([ev.JobExpired(event_id="j00:job.expired", job_id="j00", at=T0)]))
        got = await rows(database_url)
        expired = ev.JobExpired(event_id="j00:job.expired", job_id="j00", at=T0)
        assert got["j00"] == expected([*all_events, expired])["j00"]
    finally:
        await pa.close()
        await pb.close()
        for d in (a, b):
            await d.close()


async def test_without_a_cache_every_write_reloads_and_is_still_right(db: Database, database_url: str) -> None:
    p = Projector(db, cache_jobs=0)
    try:
        events: list[ev.JobEvent] = []
        for j in ("x1", "x2", "x3"):
            events += lifecycle(j, T0) + cancelled(j, T0 + timedelta(seconds=3))
        for e in events:  # one event per transaction: every job write after the first conflicts
            await p.project(items([e]))
        assert len(p.cache) == 0 and p.stats["conflicts"] == len(events) - 3
        assert await rows(database_url) == expected(events)
    finally:
        await p.close()


async def test_a_redelivered_batch_records_nothing_twice(db: Database, database_url: str) -> None:
    p = Projector(db)
    try:
        first = lifecycle("r1", T0)
        await p.project(items(first))
        await p.project(items(first))  # redelivered: COPY meets the keys, the staging path skips them
        assert p.stats["duplicates"] == 1
        later = cancelled("r1", T0 + timedelta(seconds=1))
        await p.project(items([*first, *later]))  # half old, half new
        conn = await asyncpg.connect(database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM events") == 5
        finally:
            await conn.close()
        assert await rows(database_url) == expected([*first, *later])
    finally:
        await p.close()


async def test_a_group_prepared_on_a_failed_write_is_prepared_again(
    db: Database, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While group 1 is written, group 2 is prepared on group 1's views. Group 1 fails (say a poison
    message): group 2 must not write the views that contained group 1's events. It is prepared again
    (were it not, its token would not match the row and the row would be reloaded: right, but slower)."""
    p = Projector(db)
    gate, writing, prepared_again = asyncio.Event(), asyncio.Event(), asyncio.Event()
    calls = 0
    insert_events = Tx.insert_events
    prepare = Projector._prepare

    async def first_write_blocks_then_fails(self: Tx, records: Any, *, seen_before: bool = False) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            writing.set()
            await gate.wait()
            raise ValueError("poison")
        await insert_events(self, records, seen_before=seen_before)

    async def counting_prepare(self: Projector, batches: Any) -> Any:
        group = await prepare(self, batches)
        if self.cache.get("p1") is None and "p1" in self._inflight:  # prepared on the write in flight
            prepared_again.set()
        return group

    monkeypatch.setattr(Tx, "insert_events", first_write_blocks_then_fails)
    monkeypatch.setattr(Projector, "_prepare", counting_prepare)
    try:
        done = ev.JobCompleted(event_id="p1:job.completed", job_id="p1", at=T0, outcome="succeeded")
        submitted = ev.JobSubmitted(event_id="p1:job.submitted", job_id="p1", at=T0, spec=SPEC)
        one = asyncio.ensure_future(p.project(items([submitted, done])))
        await asyncio.wait_for(writing.wait(), 10)
        two = asyncio.ensure_future(p.project(items([lifecycle("p1", T0)[1]])))  # job.accepted
        await asyncio.wait_for(prepared_again.wait(), 10)  # group 2 prepared on group 1's views
        gate.set()
        with pytest.raises(ValueError, match="poison"):
            await one
        await two
        # the completed (terminal) state of the failed batch is nowhere: not in the row, not in the cache
        assert (await rows(database_url))["p1"]["state"] == "accepted"
        cached = p.cache.get("p1")
        assert cached is not None and domain.state_of(cached.view) == ("accepted", None)
        assert p.stats["conflicts"] == 0
    finally:
        await p.close()


class _Timed:
    """The database, noting when each transaction starts (on the event loop's clock)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.starts: list[float] = []

    def transaction(self) -> Any:
        self.starts.append(asyncio.get_running_loop().time())
        return self.db.transaction()


async def test_writes_are_paced_to_one_transaction_per_period_and_what_queues_meanwhile_goes_together(
    db: Database, database_url: str
) -> None:
    every = 0.3
    timed = _Timed(db)
    p = Projector(timed, write_every_s=every)  # type: ignore[arg-type]
    try:
        events: list[ev.JobEvent] = []
        for j in ("p1", "p2", "p3"):  # one after another: each waits for the period to pass
            events += lifecycle(j, T0)
            await p.project(items(lifecycle(j, T0)))
        gaps = [b - a for a, b in itertools.pairwise(timed.starts)]
        assert len(timed.starts) == 3 and min(gaps) >= every - 0.02, gaps

        late = [cancelled(j, T0 + timedelta(seconds=3)) for j in ("p1", "p2", "p3")]
        await asyncio.gather(*(p.project(items(x)) for x in late))  # queued within one period: one write
        assert len(timed.starts) == 4 and p.stats["groups"] == 4
        assert await rows(database_url) == expected(events + [e for x in late for e in x])
    finally:
        await p.close()
