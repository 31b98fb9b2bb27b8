"""Every list reply fits in one message (issue 24): ``node.list`` over 100,000 nodes, ``job.list`` at
limit 1,000 with large records, ``job.events`` of a job whose events outweigh a page.

The fleet is published as agents do (core ``node.status.<id>`` publishes as the ``node`` user,
pipelined, flushed every few thousand) and projected by a real metadata process.
``PAGING_TEST_NODES`` overrides the fleet size (default 100,000).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
import structlog
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Constraints, JobSpec, Resources, Workload
from services.devstack import NatsServer
from services.metadata.paging import ENVELOPE_BYTES, PAGE_BYTES
from tests.support.api import request, start_metadata
from tests.support.events import fleet_status, publish
from tests.support.servers import Spawn, nats_auth
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
log = structlog.get_logger()

NODES = int(os.environ.get("PAGING_TEST_NODES", "100000"))
REPLY_BOUND = PAGE_BYTES + ENVELOPE_BYTES
"""No list reply may be larger (with the server's default max_payload of 1 MiB)."""


def listed_state(st: ev.NodeStatus, now: datetime, ttl_s: float = 15.0) -> str:
    if st.state == "active" and now - st.at >= timedelta(seconds=ttl_s):
        return "inactive"
    return st.state


async def publish_fleet(server: NatsServer, statuses: list[ev.NodeStatus]) -> float:
    """Publish every status as the ``node`` user; seconds until the NODES stream holds them all."""
    started = time.perf_counter()
    agent = await nats.connect(server.url, **nats_auth("node"))
    try:
        for i, st in enumerate(statuses):
            await agent.publish(ev.subject_of(st), ev.encode(st))
            if i % 5000 == 4999:
                await agent.flush()
        await agent.flush()
    finally:
        await agent.close()
    return time.perf_counter() - started


async def raw_request(nc: Client, subject: str, body: bytes) -> tuple[int, bytes]:
    """(code, raw reply body): the size of the reply is what these tests check."""
    reply = await nc.request(subject, body, timeout=10)
    code = int(reply.headers[s.ERROR_CODE_HEADER]) if reply.headers and s.ERROR_CODE_HEADER in reply.headers else 200
    return code, reply.data


async def walk(nc: Client, subject: str, field: str, body: dict[str, Any]) -> tuple[list[Any], list[int]]:
    """Every item of a list, page by page through ``next``; and each page's reply size."""
    items: list[Any] = []
    sizes: list[int] = []
    after: str | None = None
    while True:
        req = {**body, **({"after": after} if after else {})}
        code, data = await raw_request(nc, subject, json.dumps(req).encode())
        assert code == 200, data[:300]
        page = json.loads(data)
        assert page["count"] == len(page[field])
        sizes.append(len(data))
        items += page[field]
        after = page["next"]
        if after is None:
            return items, sizes


async def test_node_list_pages_walk_100k_nodes_exactly_once_and_the_summary_answers_at_once(
    nc: Client, services: Spawn, nats_server: NatsServer, database_url: str
) -> None:
    await start_metadata(nc, services, database_url)
    now = datetime.now(UTC)
    statuses = [fleet_status(i, now) for i in range(NODES)]
    t0 = time.perf_counter()
    published_s = await publish_fleet(nats_server, statuses)

    async def all_stored() -> bool:
        return (await nc.jetstream().stream_info(s.NODES.name)).state.messages == NODES

    await eventually(all_stored, timeout=60, what=f"{NODES} statuses stored")

    async def all_projected() -> bool:
        code, body = await request(nc, s.NODE_LIST, {"summary": True})
        return code == 200 and body["summary"]["total"] == NODES

    await eventually(all_projected, timeout=120, what=f"{NODES} nodes projected")
    projected_s = time.perf_counter() - t0

    # the summary: one small reply, counts and capacity as computed here
    code, data = await raw_request(nc, s.NODE_LIST, b'{"summary": true}')
    assert code == 200 and len(data) < 1024
    summary = json.loads(data)["summary"]
    listed = [listed_state(st, now) for st in statuses]
    assert summary["states"] == {"active": 0, "inactive": 0, "draining": 0, "down": 0, **Counter(listed)}
    active = [st for st, state in zip(statuses, listed, strict=True) if state == "active"]
    assert summary["capacity"] == {
        "cpu": 8.0 * len(active),
        "memory_mb": 16384 * len(active),
        "gpu": sum(st.gpus for st in active),
    }
    assert summary["free"] == {  # nothing reserved: free is what the nodes report (gpu: all of them)
        "cpu": sum(st.cpu_free for st in active),
        "memory_mb": sum(st.memory_free_mb for st in active),
        "gpu": sum(st.gpus for st in active),
    }

    # the whole fleet through the cursor: each node once, in node_id order, every reply under the bound
    t1 = time.perf_counter()
    nodes, sizes = await walk(nc, s.NODE_LIST, "nodes", {"limit": 5000})
    walk_s = time.perf_counter() - t1
    ids = [n["node_id"] for n in nodes]
    assert ids == [st.node_id for st in statuses]  # none missing, none twice, in order
    assert max(sizes) <= REPLY_BOUND
    assert len(sizes) > NODES // 5000  # bytes, not the limit, ended the pages
    assert {n["node_id"]: (n["state"], n["active"]) for n in nodes[:200]} == {
        st.node_id: (st.state, listed_state(st, now) == "active") for st in statuses[:200]
    }

    # the default page is 500; filters page the same way
    code, body = await request(nc, s.NODE_LIST, {})
    assert code == 200 and body["count"] == 500 and body["next"]
    draining_c, _ = await walk(nc, s.NODE_LIST, "nodes", {"state": "draining", "label": "zone=c"})
    expected = [
        st.node_id
        for st, state in zip(statuses, listed, strict=True)
        if state == "draining" and st.labels["zone"] == "c"
    ]
    assert [n["node_id"] for n in draining_c] == expected and expected
    code, body = await request(nc, s.NODE_LIST, {"summary": True, "label": "rack=r7"})
    assert code == 200 and body["summary"]["total"] == sum(1 for st in statuses if st.labels["rack"] == "r7")

    # summary latency, measured here for the record (the benchmark reports it properly)
    lat = []
    for _ in range(5):
        t = time.perf_counter()
        await raw_request(nc, s.NODE_LIST, b'{"summary": true}')
        lat.append(time.perf_counter() - t)
    log.info(
        "node.list over the fleet",
        nodes=NODES,
        published_s=round(published_s, 1),
        projected_s=round(projected_s, 1),
        walk_s=round(walk_s, 2),
        pages=len(sizes),
        largest_reply=max(sizes),
        summary_ms=[round(1000 * x) for x in lat],
    )


BIG_SPEC = JobSpec(
    name="big",
    technology="docker",
    replicas=1,
    resources=Resources(cpu=1.0, memory_mb=512),
    constraints=Constraints(labels={f"label-{i}": "v" * 40 for i in range(20)}),
    cluster="shared",
    workload=Workload(image="registry/big:1", args=["--flag=" + "x" * 60 for _ in range(12)]),
    strategy="best_fit",
)


async def test_job_list_at_limit_1000_with_large_records_answers_a_smaller_page_and_a_cursor(
    nc: Client, services: Spawn, database_url: str
) -> None:
    js = nc.jetstream()
    await start_metadata(nc, services, database_url)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    ids = [f"big-{i:05d}" for i in range(1500)]
    await publish(js, [ev.JobSubmitted(event_id=f"{j}:submitted", job_id=j, at=t0, spec=BIG_SPEC) for j in ids])

    async def all_there() -> bool:
        code, body = await request(nc, s.JOB_LIST, {"limit": 1})
        return code == 200 and body["jobs"] and body["jobs"][0]["job_id"] == ids[-1]

    await eventually(all_there, timeout=60, what="1500 jobs projected")
    code, data = await raw_request(nc, s.JOB_LIST, b'{"limit": 1000}')
    assert code == 200 and len(data) <= REPLY_BOUND
    page = json.loads(data)
    record = json.dumps(page["jobs"][0]).encode()
    assert len(record) > 1500  # large records, as with a long history
    assert 0 < page["count"] == len(page["jobs"]) < 1000 and page["next"]
    assert page["jobs"][0]["spec"]["workload"]["args"] == BIG_SPEC.workload.args  # full records
    jobs, sizes = await walk(nc, s.JOB_LIST, "jobs", {"limit": 1000})
    assert [j["job_id"] for j in jobs] == ids[::-1] and max(sizes) <= REPLY_BOUND


async def test_job_events_are_paged_by_bytes_and_count(nc: Client, services: Spawn, database_url: str) -> None:
    js = nc.jetstream()
    await start_metadata(nc, services, database_url)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    job = "heavy"
    instances = [ev.Instance(instance_id=f"i-{r:017x}", instance_type="m5.large", replica=r) for r in range(1000)]
    heavy = [  # eight events of about 100 kB each: more than one page
        ev.ClusterProvisioning(
            event_id=f"{job}:prov:{k}", job_id=job, at=t0 + timedelta(seconds=k), instances=instances
        )
        for k in range(8)
    ]
    light = [
        ev.PlacementReleased(event_id=f"{job}:rel:{k}", job_id=job, at=t0 + timedelta(seconds=10 + k))
        for k in range(30)
    ]
    submitted = ev.JobSubmitted(event_id=f"{job}:submitted", job_id=job, at=t0 - timedelta(seconds=1), spec=BIG_SPEC)
    await publish(js, [*light, *heavy, submitted])

    async def complete() -> bool:
        code, _ = await request(nc, s.JOB_EVENTS, {"job_id": job, "limit": 1})
        return code == 200 and len((await walk(nc, s.JOB_EVENTS, "events", {"job_id": job}))[0]) == 39

    await eventually(complete, timeout=30, what="39 events recorded")
    events, sizes = await walk(nc, s.JOB_EVENTS, "events", {"job_id": job})
    assert [e["event_id"] for e in events] == [submitted.event_id] + [e.event_id for e in heavy + light]
    assert len(sizes) > 1 and max(sizes) <= REPLY_BOUND
    small, _ = await walk(nc, s.JOB_EVENTS, "events", {"job_id": job, "limit": 7})
    assert small == events
    # the first-wave request still answers (its first page)
    code, data = await raw_request(nc, s.JOB_EVENTS, json.dumps({"job_id": job}).encode())
    assert code == 200 and json.loads(data)["events"][0]["event_id"] == submitted.event_id


BAD_PAGING_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    (s.NODE_LIST, {"limit": 0}, "limit"),
    (s.NODE_LIST, {"limit": 5001}, "limit"),
    (s.NODE_LIST, {"after": "garbage!"}, "after"),
    (s.NODE_LIST, {"state": "asleep"}, "state"),
    (s.NODE_LIST, {"label": "zone"}, "label"),
    (s.NODE_LIST, {"summary": "yes"}, "summary"),
    (s.JOB_EVENTS, {"job_id": "j", "after": "bm90IGEgY3Vyc29y"}, "after"),
    (s.JOB_EVENTS, {"job_id": "j", "limit": 0}, "limit"),
    (s.JOB_LIST, {"after": "bjE6bm9kZS0x"}, "after"),  # a node.list cursor is not a job.list one
]


async def test_bad_paging_requests_are_400_naming_the_field(nc: Client, services: Spawn, database_url: str) -> None:
    await start_metadata(nc, services, database_url)
    for subject, body, field in BAD_PAGING_REQUESTS:
        code, reply = await request(nc, subject, body)
        assert (code, reply["error"].get("field")) == (400, field), (subject, body, reply)
