"""The gateway's job-state view across a restart (issue #21): it starts from its snapshot in
SNAPSHOTS and folds only the tail; ended jobs are forgotten after ``retention.ended_keep_s``.

The jobs' events are published straight into the streams (the gateway is the only service
running), with ``at`` times chosen so that some ended long ago and one just now."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from schemas import subjects as s
from services.devstack.procs import ServiceProcess
from services.runtime.streams import ensure_streams
from tests.support.servers import Spawn
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

KEEP_S = 30
AGED_OUT = (
    "view snapshot older than the stream's first event (aged out) or ahead of the stream;"
    " replaying the streams from their start"
)


def write_config(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "scheduler.toml"
    path.write_text(
        'technologies = ["docker"]\n'
        "[retention]\n"
        f"ended_keep_s = {KEEP_S}\n"
        "snapshot_every_s = 3600\n"  # only the clean stop saves: the tail after it is exact
        "snapshot_every_events = 1000000\n"
    )
    return {"SCHEDULER_CONFIG": str(path)}


async def publish(nc: Client, subject: str, job_id: str, at: datetime, **extra: str) -> None:
    body = {"type": subject, "event_id": f"{job_id}:{subject}", "job_id": job_id, "at": at.isoformat(), **extra}
    if subject == s.JOB_SUBMITTED:
        body["spec"] = {"name": job_id, "technology": "docker"}  # type: ignore[assignment]
    await nc.jetstream().publish(subject, msgspec.json.encode(body), headers={s.MSG_ID_HEADER: body["event_id"]})


async def cancel(nc: Client, job_id: str) -> tuple[int, str]:
    """The gateway's answer to job.cancel: (code, state or error message)."""
    reply = await nc.request(s.JOB_CANCEL, msgspec.json.encode({"job_id": job_id}), timeout=5.0)
    code = (reply.headers or {}).get("Nats-Service-Error-Code")
    if code:
        return int(code), (reply.headers or {}).get("Nats-Service-Error", "")
    return 200, str(json.loads(reply.data)["state"])


def logged(proc: ServiceProcess, event: str) -> dict[str, object]:
    for line in proc.log_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            return entry
    raise AssertionError(f"{proc.name} never logged {event!r}")


async def test_a_restarted_gateway_folds_only_the_tail_and_forgets_old_ended_jobs(
    services: Spawn, nc: Client, tmp_path: Path
) -> None:
    env = write_config(tmp_path)
    (first,) = await services("gateway", env=env)
    now = datetime.now(UTC)
    long_ago = now - timedelta(hours=2)
    old = [f"old-{i}" for i in range(150)]
    for job_id in old:
        await publish(nc, s.JOB_SUBMITTED, job_id, long_ago)
        await publish(nc, s.JOB_COMPLETED, job_id, long_ago, outcome="succeeded")
    await publish(nc, s.JOB_SUBMITTED, "live-1", long_ago)  # live however old
    await publish(nc, s.JOB_SUBMITTED, "just-ended", now)
    await publish(nc, s.JOB_COMPLETED, "just-ended", now, outcome="failed")

    async def forgotten() -> bool:
        return (await cancel(nc, old[-1]))[0] == 404

    await eventually(forgotten, timeout=20, what="the old ended jobs forgotten")
    first.stop()  # SIGTERM: a clean stop saves the snapshot
    assert logged(first, "snapshot saved")["owner"] == "gateway-view"

    tail = ["tail-1", "tail-2", "tail-3"]
    for job_id in tail:
        await publish(nc, s.JOB_SUBMITTED, job_id, datetime.now(UTC))
    (second,) = await services("gateway", env=env)

    code, state = await cancel(nc, "live-1")
    assert (code, state) == (200, "cancelling")
    code, message = await cancel(nc, "just-ended")
    assert code == 409 and "failed" in message
    code, message = await cancel(nc, old[0])
    assert code == 404 and "forgets jobs that ended more than 30 s ago" in message
    assert [await cancel(nc, j) for j in tail] == [(200, "cancelling")] * 3

    following = logged(second, "job state view following")
    assert following["from_snapshot"] is True
    assert following["restored_jobs"] == 2  # live-1 and just-ended: the 150 forgotten ones are not in it

    async def caught_up() -> bool:
        return "job state view caught up" in second.log_text()

    await eventually(caught_up, timeout=10, what="the restarted view caught up")
    # the tail only: the three submits (and the cancels this test made since), never the 303 before
    assert int(logged(second, "job state view caught up")["replayed"]) <= len(tail) + 4  # type: ignore[call-overload]


async def start_and_stop_with_a_snapshot(services: Spawn, env: dict[str, str]) -> None:
    """A gateway that replays what is stored, catches up, and saves its snapshot at a clean stop."""
    (gateway,) = await services("gateway", env=env)

    async def caught_up() -> bool:
        return "job state view caught up" in gateway.log_text()

    await eventually(caught_up, timeout=10, what="the view caught up")
    gateway.stop()
    assert logged(gateway, "snapshot saved")["owner"] == "gateway-view"


async def test_a_damaged_snapshot_means_a_full_replay(services: Spawn, nc: Client, tmp_path: Path) -> None:
    env = write_config(tmp_path)
    await ensure_streams(nc.jetstream())
    for job_id in ("live-a", "live-b"):
        await publish(nc, s.JOB_SUBMITTED, job_id, datetime.now(UTC))
    await start_and_stop_with_a_snapshot(services, env)
    store = await nc.jetstream().object_store(s.SNAPSHOTS.name)
    for slot in ("a", "b"):
        await store.put(f"gateway-view.{slot}", b"\x00damaged")
    (gateway,) = await services("gateway", env=env)
    assert logged(gateway, "job state view following")["from_snapshot"] is False
    assert [await cancel(nc, j) for j in ("live-a", "live-b")] == [(200, "cancelling")] * 2


async def test_a_snapshot_older_than_the_streams_first_event_means_a_full_replay(
    services: Spawn, nc: Client, tmp_path: Path
) -> None:
    env = write_config(tmp_path)
    await ensure_streams(nc.jetstream())
    await publish(nc, s.JOB_SUBMITTED, "before", datetime.now(UTC))
    await start_and_stop_with_a_snapshot(services, env)
    for job_id in ("aged-out", "kept"):
        await publish(nc, s.JOB_SUBMITTED, job_id, datetime.now(UTC))
    js = nc.jetstream()
    kept = (await js.get_last_msg(s.JOBS.name, s.JOB_SUBMITTED)).seq
    await js.purge_stream(s.JOBS.name, seq=kept)  # as max_age would: everything before "kept" is gone
    (gateway,) = await services("gateway", env=env)
    assert logged(gateway, AGED_OUT)["stream"] == s.JOBS.name
    assert logged(gateway, "job state view following")["from_snapshot"] is False
    assert await cancel(nc, "kept") == (200, "cancelling")
