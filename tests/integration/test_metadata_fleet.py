"""Node statuses as state (issue #23) against real servers: metadata takes them on a core subscription
and writes them coalesced (one row per node per flush, history only when due), drain facts still
come through the NODES durable, whose filter an existing durable gets updated to, and one instance
at a time writes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import api as js_api

from schemas import events as ev
from schemas import subjects as s
from services.metadata.adapters import Database, FleetWriter
from services.metadata.fleet import Fleet
from services.metadata.sql_nodes import HISTORY_EVERY_S
from services.runtime.streams import ensure_consumer, ensure_streams
from tests.support.api import request, start_metadata
from tests.support.events import node_status
from tests.support.servers import Spawn, count
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

T0 = datetime(2025, 6, 1, tzinfo=UTC)
EVERY = timedelta(seconds=HISTORY_EVERY_S)


def filters(c: js_api.ConsumerConfig) -> set[str]:
    return set(c.filter_subjects or ()) | ({c.filter_subject} if c.filter_subject else set())


async def test_statuses_reach_node_list_drains_still_project_and_the_durable_reads_drains_only(
    nc: Client, services: Spawn, database_url: str, tmp_path: Path
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    before = msgspec.structs.replace(s.METADATA_NODES, filter_subjects=s.NODES.subjects)  # as declared until now
    await ensure_consumer(js, before)
    assert filters((await js.consumer_info(s.NODES.name, s.METADATA_NODES.durable)).config) == set(s.NODES.subjects)
    config = tmp_path / "scheduler.toml"
    config.write_text('technologies = ["docker"]\n[metadata]\nnode_flush_s = 0.3\n')
    await start_metadata(nc, services, database_url, SCHEDULER_CONFIG=str(config))

    info = await js.consumer_info(s.NODES.name, s.METADATA_NODES.durable)
    assert filters(info.config) == {s.NODE_DRAINING_ALL}  # the existing durable was updated

    now = datetime.now(UTC)
    reports = [node_status("n1", now - timedelta(seconds=20 - i), cpu_free=float(i % 8)) for i in range(20)]
    for st in reports:  # as agents do: core publishes, no JetStream
        await nc.publish(s.node_status_subject(st.node_id), ev.encode(st))
    await js.publish(s.node_status_subject("n2"), ev.encode(node_status("n2", now)))  # stored too: also seen
    drain = ev.NodeDraining(event_id="n2:drain:1", node_id="n2", at=now, draining=True, reason="maintenance")
    await js.publish(s.node_draining_subject("n2"), ev.encode(drain), headers={s.MSG_ID_HEADER: drain.event_id})

    async def listed() -> dict[str, Any]:
        code, body = await request(nc, s.NODE_LIST, {})
        assert code == 200, body
        return {n["node_id"]: n for n in body["nodes"]}

    async def all_there() -> bool:
        nodes = await listed()
        return (
            "n1" in nodes
            and datetime.fromisoformat(nodes["n1"]["at"]) == reports[-1].at
            and "n2" in nodes
            and nodes["n2"]["draining"]
        )

    await eventually(all_there, what="the newest status of n1, n2 draining")
    nodes = await listed()
    assert nodes["n1"]["cpu_free"] == reports[-1].cpu_free and nodes["n1"]["active"] is True
    assert nodes["n2"]["state"] == "active" and nodes["n2"]["active"] is True
    # 20 reports within a minute: one history row, and no row of events per status
    assert await count(database_url, "SELECT count(*) FROM node_history WHERE node_id = 'n1'") == 1
    assert await count(database_url, "SELECT count(*) FROM events WHERE job_id IS NULL") == 1  # the drain fact
    code, body = await request(nc, s.NODE_LIST, {"summary": True})
    assert code == 200
    assert body["summary"]["total"] == 2 and body["summary"]["states"]["active"] == 1
    assert body["summary"]["states"]["draining"] == 1


def report(fleet: Fleet, statuses: Sequence[ev.NodeStatus]) -> None:
    """Hand ``statuses`` to the fleet's store as the subscription does."""
    for st in statuses:
        fleet.store.put(s.node_status_subject(st.node_id).encode(), b"", ev.encode(st))


async def test_many_statuses_of_a_node_in_one_period_are_one_row_write(db: Database, database_url: str) -> None:
    writer = FleetWriter(db)
    fleet = Fleet(writer, flush_s=10.0)
    try:
        # a node reporting changed figures 50 times, its reports a minute apart: each would be worth a
        # history row on its own, but they arrive within one flush period
        report(fleet, [node_status("n1", T0 + i * EVERY, cpu_free=float(i % 8)) for i in range(50)])
        assert await fleet.flush() == 1
        assert fleet.stats["rows"] == 1 and fleet.stats["history"] == 1
        assert await count(database_url, "SELECT count(*) FROM node_history") == 1
        newest = T0 + 49 * EVERY
        assert await count(database_url, "SELECT count(*) FROM nodes WHERE node_id = 'n1' AND at = $1", newest) == 1
        # an older status arriving late does not replace the current row (the UPSERT's guard)
        report(fleet, [node_status("n1", T0, cpu_free=7.0)])
        await fleet.flush()
        assert await count(database_url, "SELECT count(*) FROM nodes WHERE at = $1", newest) == 1
    finally:
        await writer.close()


async def test_after_a_restart_the_sql_guard_decides_once_then_memory_does(db: Database, database_url: str) -> None:
    first = FleetWriter(db)
    try:
        fleet = Fleet(first, flush_s=10.0)
        report(fleet, [node_status("n1", T0, cpu_free=1.0)])
        await fleet.flush()
    finally:
        await first.close()
    writer = FleetWriter(db)
    try:
        restarted = Fleet(writer, flush_s=10.0)  # empty memory
        report(restarted, [node_status("n1", T0 + timedelta(seconds=10), cpu_free=2.0)])  # changed, too soon
        await restarted.flush()
        assert restarted.stats["history"] == 0
        report(restarted, [node_status("n1", T0 + timedelta(seconds=10) + EVERY, cpu_free=2.0)])
        await restarted.flush()  # the stored row (cpu_free 1) is a minute old and differs: a row
        assert restarted.stats["history"] == 1
        assert await count(database_url, "SELECT count(*) FROM node_history WHERE node_id = 'n1'") == 2
    finally:
        await writer.close()


async def test_one_instance_writes_the_others_drop_and_take_over_when_it_goes(db: Database, database_url: str) -> None:
    a_writer, b_writer = FleetWriter(db), FleetWriter(db)
    a, b = Fleet(a_writer, flush_s=10.0), Fleet(b_writer, flush_s=10.0)
    try:
        for fleet in (a, b):  # every instance receives every status
            report(fleet, [node_status("n1", T0), node_status("n2", T0)])
        assert await a.flush() == 2
        assert await b.flush() is None and b.stats["dropped"] == 2 and len(b.store) == 0
        await a_writer.close()  # instance a goes: its connection, and the lock with it
        report(b, [node_status("n1", T0 + timedelta(seconds=5))])
        assert await b.flush() == 1 and b_writer.writer
        assert await count(database_url, "SELECT count(*) FROM nodes WHERE at = $1", T0 + timedelta(seconds=5)) == 1
    finally:
        await a_writer.close()
        await b_writer.close()
