"""The invariant checker reads a live server's streams."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client

from schemas import subjects as s
from tests.support.api import DEMO
from tests.support.events import publish_nodes
from tests.support.invariants import check_live
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration


async def test_a_short_run_is_clean(nc: Client, services: Spawn, events) -> None:  # type: ignore[no-untyped-def]
    await services("gateway", "intake", "placement")
    await publish_nodes(nc)
    decided = await events(s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.JOB_REJECTED)
    ids = [json.loads((await nc.request(s.JOB_SUBMIT, DEMO, timeout=5)).data)["job_id"] for _ in range(20)]
    for j in ids:
        await decided.wait(j)
    report = await check_live(nc.jetstream(), submitted_ids=ids)
    assert report.ok, report
    assert report.jobs == 20 and report.decided == 20
