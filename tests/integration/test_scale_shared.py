"""Resizing a shared job through real nats-server and service processes (§8.3, placement side):
``job.scale_requested`` (as the gateway stores it) becomes a revision with reason ``scale``;
growth is placed, shrink frees its reservations, growth without room leaves the job degraded
until capacity appears, and a repeated count stores nothing."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from services.runtime.publisher import Publisher
from tests.support.api import job, request
from tests.support.config import config
from tests.support.events import node
from tests.support.fleet import (
    Placements,
    consistent,
    decided,
    degraded,
    nodes_of,
    place,
    start_placement,
    watch_placements,
)
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration

Event = dict[str, Any]


@pytest.fixture
async def placements(nc: Client) -> Placements:
    return await watch_placements(nc)


@pytest.fixture
async def placement_running(services: Spawn, placements: Placements, tmp_path: Path) -> None:
    """Gateway, intake and placement started, watched from the start."""
    await start_placement(services, tmp_path)


async def scale(nc: Client, job_id: str, replicas: int, key: str | None = None) -> None:
    """Store ``job.scale_requested`` as the gateway does (event id from the key, else unique)."""
    key = key or uuid.uuid4().hex
    e = ev.JobScaleRequested(
        event_id=f"{job_id}:{s.JOB_SCALE_REQUESTED}:{key}", job_id=job_id, replicas=replicas, idempotency_key=key
    )
    await Publisher(nc.jetstream()).publish(e)


@pytest.mark.usefixtures("placement_running")
async def test_grow_then_shrink_are_revisions_and_a_shrink_frees_its_reservations(
    nc: Client, placements: Placements
) -> None:
    await node(nc, "a", 8.0)
    await node(nc, "b", 8.0)
    first = await place(nc, job("web", 4, constraints={"spread": True}))
    job_id = first["job_id"]
    assert nodes_of(first) == {0: "a"}

    await scale(nc, job_id, 2, key="grow")
    second = await placements.wait(job_id, decided(2))
    assert second["replicas"] == 2 and nodes_of(second) == {0: "a", 1: "b"}  # spread kept
    assert second["changes"] == [{"replica": 1, "from": None, "to": "b", "reason": "scale", "by": None}]

    await scale(nc, job_id, 2, key="grow")  # a retry with the same key: deduplicated by JOBS
    await scale(nc, job_id, 2)  # the same count again: a no-op
    await scale(nc, job_id, 1)
    third = await placements.wait(job_id, decided(3))  # revision 3 is the shrink: nothing in between
    assert third["replicas"] == 1 and nodes_of(third) == {0: "a"}
    assert third["changes"] == [{"replica": 1, "from": "b", "to": None, "reason": "scale", "by": None}]

    big = await place(nc, job("big", 8))  # only b's 8 cpu, freed by the shrink, can take it
    assert nodes_of(big) == {0: "b"}
    await consistent(nc)


@pytest.mark.usefixtures("placement_running")
async def test_growth_without_room_is_degraded_then_placed_when_capacity_appears(
    nc: Client, placements: Placements
) -> None:
    await node(nc, "a", 4.0)
    first = await place(nc, job("grow", 4))
    job_id = first["job_id"]

    await scale(nc, job_id, 3)
    second = await placements.wait(job_id, decided(2))
    assert second["replicas"] == 3 and nodes_of(second) == {0: "a"} and second["changes"] == []
    gone = await placements.wait(job_id, degraded(2))
    assert gone["missing"] == [1, 2] and gone["nodes_total"] == 1
    assert gone["excluded"]["cpu"] == 1 and "insufficient cpu" in gone["reason"]

    await node(nc, "b", 4.0)  # room for one more: placed, the last still missing
    third = await placements.wait(job_id, decided(3))
    assert third["changes"] == [{"replica": 1, "from": None, "to": "b", "reason": "scale", "by": None}]
    still = await placements.wait(job_id, degraded(3))
    assert still["missing"] == [2]

    await node(nc, "c", 4.0)
    fourth = await placements.wait(job_id, decided(4))
    assert nodes_of(fourth) == {0: "a", 1: "b", 2: "c"}
    assert fourth["changes"] == [{"replica": 2, "from": None, "to": "c", "reason": "scale", "by": None}]
    await consistent(nc)


@pytest.mark.usefixtures("placement_running")
async def test_a_scale_right_after_submission_waits_for_the_decision(nc: Client, placements: Placements) -> None:
    await node(nc, "a", 8.0)
    code, reply = await request(nc, s.JOB_SUBMIT, job("early", 1))
    assert code == 200
    job_id = reply["job_id"]
    await scale(nc, job_id, 3)  # most likely stored before the job is even accepted

    await placements.wait(job_id, decided(1))
    second = await placements.wait(job_id, decided(2))
    assert second["replicas"] == 3 and len(second["assignments"]) == 3


@pytest.mark.usefixtures("placement_running")
async def test_through_the_gateway_s_job_scale(nc: Client, placements: Placements) -> None:
    await node(nc, "a", 8.0)
    first = await place(nc, job("via-gateway", 2))
    job_id = first["job_id"]

    code, reply = await request(nc, s.JOB_SCALE, {"job_id": job_id, "replicas": 3})
    assert code == 200 and reply["job_id"] == job_id and reply["replicas"] == 3, reply
    second = await placements.wait(job_id, decided(2))
    assert second["replicas"] == 3 and nodes_of(second) == {0: "a", 1: "a", 2: "a"}


async def test_with_two_placement_instances_requests_apply_in_stream_order(
    nc: Client, services: Spawn, placements: Placements, tmp_path: Path
) -> None:
    env = config(tmp_path)
    await services("placement", "placement", env=env)
    await services("gateway", "intake", env=env)
    await node(nc, "a", 64.0)
    first = await place(nc, job("burst", 1))
    job_id = first["job_id"]

    counts = [2, 5, 5, 1, 4, 3, 3, 6]
    for n in counts:  # stored back to back: the two instances compete for them
        await scale(nc, job_id, n)
    await placements.wait(job_id, lambda e: e["type"] == s.PLACEMENT_DECIDED and e.get("replicas") == 6)

    revisions = sorted(
        (e["revision"], e["replicas"]) for e in placements.by_job[job_id] if e["type"] == s.PLACEMENT_DECIDED
    )
    assert revisions == [(1, 1), (2, 2), (3, 5), (4, 1), (5, 4), (6, 3), (7, 6)]  # repeats store nothing
    await consistent(nc)
