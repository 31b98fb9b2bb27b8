"""Retention (issue #21) against real servers: stream limits from ``[retention]`` (old events age
out, a full stream refuses loudly, limits reach streams created without them) and PostgreSQL
bounded (node history downsampled, ended jobs forgotten after ``jobs_keep_s``, live ones kept)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import api as js_api
from nats.js.errors import APIError

from schemas import subjects as s
from services.runtime.config import RetentionConf, load_config
from services.runtime.streams import ensure_streams
from tests.support.api import DEMO
from tests.support.servers import Spawn
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
        assert cfg.discard == js_api.DiscardPolicy.NEW, spec.name
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
    assert info.config.discard == js_api.DiscardPolicy.NEW
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


async def test_a_full_stream_refuses_a_publish(nc: Client) -> None:
    js = nc.jetstream(timeout=10)
    await ensure_streams(js, [s.JOBS], retention=RetentionConf(stream_max_bytes=2048))
    stored = 0
    with pytest.raises(APIError) as refused:
        for i in range(100):
            await js.publish(s.JOB_CANCEL_REQUESTED, b"x" * 200, headers={"Nats-Msg-Id": f"m{i}"})
            stored += 1
    assert "maximum bytes" in str(refused.value).lower()
    info = await js.stream_info(s.JOBS.name)
    assert info.state.messages == stored and info.state.first_seq == 1  # nothing old was dropped


async def test_submit_into_a_full_stream_answers_503(nc: Client, services: Spawn, tmp_path: Path) -> None:
    path = retention_toml(tmp_path, stream_max_bytes=4096)
    assert load_config(path).retention.stream_max_bytes == 4096
    await services("gateway", env={"SCHEDULER_CONFIG": str(path)})
    js = nc.jetstream(timeout=10)
    assert (await js.stream_info(s.JOBS.name)).config.max_bytes == 4096
    answers: list[dict[str, object]] = []
    headers: list[dict[str, str] | None] = []
    for _ in range(40):
        reply = await nc.request(s.JOB_SUBMIT, DEMO, timeout=10)
        headers.append(reply.headers)
        answers.append(json.loads(reply.data) if reply.data else {})
        if reply.headers and reply.headers.get(s.ERROR_HEADER):
            break
    last = headers[-1]
    assert last is not None and last.get(s.ERROR_CODE_HEADER) == "503", answers[-1]
    assert len(answers) > 1  # some were stored before the stream was full
