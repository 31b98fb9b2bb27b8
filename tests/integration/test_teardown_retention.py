"""JOB_LIFECYCLE bounded (issue #21): teardown deletes the records of jobs ended and released
``retention.ended_keep_s`` ago and purges the delete markers, so a restarted teardown or
provisioner replays only the live jobs' records.

The jobs' events are published straight into the streams (teardown is the only service running):
``job.completed`` of a shared job makes teardown record its end and release it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from schemas.lifecycle import JobLifecycle
from services.cloud.records import JobRecords, lifecycle_bucket
from services.devstack import NatsServer
from services.devstack._util import http_json
from services.runtime import natspy
from tests.support.config import aws_env, write_config
from tests.support.events import Events
from tests.support.servers import Spawn
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

KV_STREAM = f"KV_{s.JOB_LIFECYCLE.name}"


async def publish(nc: Client, event: ev.Event) -> None:
    subject = ev.subject_of(event)
    await nc.jetstream().publish(subject, msgspec.json.encode(event), headers={s.MSG_ID_HEADER: event.event_id})


async def stored_records(nc: Client) -> int:
    return int((await nc.jetstream().stream_info(KV_STREAM)).state.messages)


async def stored_keys(nc: Client) -> list[str]:
    """The keys the bucket's stream holds, from the server's own count per subject: nats-py's
    ``kv.keys()`` may end its listing before a message already on its way was read (NoKeysError)."""
    info = await nc.jetstream().stream_info(KV_STREAM, subjects_filter=">")
    prefix = f"$KV.{s.JOB_LIFECYCLE.name}."
    return sorted(subject.removeprefix(prefix) for subject in (info.state.subjects or {}))


async def test_ended_records_are_forgotten_after_the_window_and_restarts_read_only_the_rest(
    nc: Client, services: Spawn, events: Callable[..., Awaitable[Events]], ec2_endpoint: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "[retention]\nended_keep_s = 1.0\ncleanup_every_s = 0.2\n")
    env = aws_env(ec2_endpoint, config)
    (td,) = await services("teardown", env=env)
    released = await events(s.PLACEMENT_RELEASED)

    ended = [f"ended-{i}" for i in range(20)]
    for job_id in ended:
        await publish(nc, ev.JobCompleted(event_id=f"{job_id}:completed", job_id=job_id, outcome="succeeded"))
    await publish(nc, ev.ClusterProvisioning(event_id="live-1:provisioning", job_id="live-1"))  # a live record
    for job_id in ended:
        await released.wait(job_id, timeout=20)

    kv = await lifecycle_bucket(nc.jetstream())

    async def only_the_live_record_is_stored() -> bool:
        return await stored_records(nc) == 1  # records deleted, then their markers purged

    await eventually(only_the_live_record_is_stored, timeout=20, what="ended records forgotten and markers purged")
    assert await stored_keys(nc) == ["live-1"]

    # a restarted teardown reads only the rest and keeps the live record
    td.stop()
    await services("teardown", env=env)
    live, _ = await JobRecords(kv).get("live-1")
    assert live is not None and live.end is None and live.cluster == "dedicated"

    # so does the provisioner's follower: its replay at start is the live record alone
    into: dict[str, JobLifecycle] = {}
    caught_up = asyncio.Event()
    follower = asyncio.create_task(JobRecords(kv).follow(lambda _: True, into, caught_up))
    try:
        await asyncio.wait_for(caught_up.wait(), timeout=10)
        assert list(into) == ["live-1"]
    finally:
        follower.cancel()
    assert await stored_records(nc) == 1


async def test_purging_markers_leaves_no_watcher_behind(nc: Client, nats_server: NatsServer) -> None:
    """nats-py 2.16's ``purge_deletes`` leaves its watcher subscribed, receiving every later update
    (teardown grew to 960 MB in a soak): ours stops it, and purges only markers old enough."""
    kv = await lifecycle_bucket(nc.jetstream())
    for i in range(3):
        await kv.put(f"job-{i}", b"{}")
        await kv.delete(f"job-{i}")

    def subscriptions() -> int:
        connz = http_json(f"{nats_server.monitor_url}/connz?subs=1", timeout=5.0) or {}
        return sum(int(c.get("subscriptions", 0)) for c in connz.get("connections", []))

    before = subscriptions()
    assert await natspy.purge_kv_deletes(kv, older_than_s=3600) == 0  # too young: kept
    assert await natspy.purge_kv_deletes(kv, older_than_s=0) == 3
    assert subscriptions() == before
    assert (await kv.status()).values == 0  # markers and values gone
