"""The web console in a real headless Chromium, against real nats-server and service processes: it shows
a job submitted over NATS in the live feed and the job list, its detail, a drained node marked and the job's
new revision; and it says so, and retries, when the credentials are wrong or NATS is unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.aio.client import Client
from playwright.async_api import Page, expect

from schemas import events as ev
from schemas import subjects as s
from services.console import ConsoleServer
from services.devstack import NatsServer, free_port
from tests.support.api import job, request, start_metadata, submit
from tests.support.events import node_status
from tests.support.servers import REPO, Spawn

pytestmark = pytest.mark.integration

Serve = Callable[..., ConsoleServer]
"""The ``serve`` fixture (tests/e2e/conftest.py): the console page for the given websocket URLs."""

NODES = ("n0", "n1", "n2")
WAIT_MS = 20_000


@pytest.fixture
async def agents(nc: Client) -> AsyncIterator[None]:
    """Node agents: each node of NODES reports 4 free cores every 0.25 s until the test ends (core NATS
    publishes, as agents do: the NODES stream captures them once the services have declared it)."""
    stop = asyncio.Event()

    async def beat() -> None:
        while not stop.is_set():
            for node_id in NODES:
                status = node_status(node_id, datetime.now(UTC), cpu_free=4.0)
                await nc.publish(ev.subject_of(status), ev.encode(status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    task = asyncio.create_task(beat())
    yield
    stop.set()
    await asyncio.wait_for(task, 10)


async def connected(page: Page) -> None:
    await expect(page.locator("#conn")).to_have_attribute("data-state", "connected", timeout=WAIT_MS)


async def test_a_submitted_job_appears_in_the_feed_and_the_list_and_a_drained_node_is_marked(
    database_url: str,  # before services: the database is dropped after metadata has stopped
    nc: Client,
    services: Spawn,
    agents: None,
    console: ConsoleServer,
    page: Page,
    tmp_path: Path,
) -> None:
    await services("gateway", "intake", "placement")
    await start_metadata(nc, services, database_url)
    await page.goto(console.url)
    await connected(page)
    active = page.locator('#fleet-counts [data-count-state="active"] b')
    await expect(active).to_have_text(str(len(NODES)), timeout=WAIT_MS)

    for garbage in (b"not json", b"null", b'{"node_id": 5}', b'{"node_id": "evil", "state": "active", "at": "x"}'):
        await nc.publish(f"{s.NODE_STATUS}.evil", garbage)  # hostile statuses: ignored, the page goes on
    await nc.publish(f"{s.NODE_DRAINING}.evil", b"[1, 2]")
    job_id = await submit(nc, job("console-e2e", 1))
    decided = page.locator(f'#feed-list li[data-job-id="{job_id}"][data-type="{s.PLACEMENT_DECIDED}"]')
    await expect(decided).to_have_count(1, timeout=WAIT_MS)
    row = page.locator(f'#job-table tr[data-job-id="{job_id}"]')
    await expect(row).to_have_attribute("data-state", "placed", timeout=WAIT_MS)
    await expect(row).to_contain_text("console-e2e")

    await row.click()  # the detail: spec, revision 1 with its assignment, history
    detail = page.locator("#job-detail")
    await expect(detail.locator('.revision[data-revision="1"]')).to_be_visible(timeout=WAIT_MS)
    await expect(detail.locator("pre.spec")).to_contain_text('"name": "console-e2e"')
    await expect(detail.locator(".history")).to_contain_text("placed")
    first = await page.locator(f'#feed-list li[data-job-id="{job_id}"] .what').inner_text()
    (where,) = (n for n in NODES if re.search(rf"\b{n}\b", first))
    await page.hover("#fleet-grid", position={"x": 4, "y": 4})  # the first cell: n0, with its numbers
    await expect(page.locator("#fleet-tip")).to_contain_text("n0 active")
    await expect(page.locator("#fleet-tip")).to_contain_text("cpu 4 / 8 used (50 %)")
    await expect(page.locator("#fleet-total")).to_have_text(f"{len(NODES)} nodes")  # no "evil" node
    for name in ("gateway", "intake", "placement", "metadata"):  # every instance, from $SRV.STATS
        await expect(page.locator(f'#svc-table tr[data-service="{name}"]').first).to_be_visible(timeout=WAIT_MS)
    await page.screenshot(path=tmp_path / "console-placed.png", full_page=True)

    code, reply = await request(nc, s.NODE_DRAIN, {"node_id": where, "reason": "e2e"})
    assert (code, reply) == (200, {"node_id": where, "draining": True})
    marked = page.locator(f'#fleet-marked li[data-node-id="{where}"]')
    await expect(marked).to_have_attribute("data-state", "draining", timeout=WAIT_MS)
    await expect(page.locator('#fleet-counts [data-count-state="draining"] b')).to_have_text("1")
    await expect(decided).to_have_count(2, timeout=WAIT_MS)  # revision 2: the replica moved off the node
    await expect(detail.locator('.revision[data-revision="2"]')).to_contain_text("drain", timeout=WAIT_MS)
    await page.screenshot(path=tmp_path / "console-drained.png", full_page=True)


async def test_a_job_id_search_shows_the_job_or_says_there_is_none(
    database_url: str, nc: Client, services: Spawn, console: ConsoleServer, page: Page
) -> None:
    await services("gateway", "intake")
    await start_metadata(nc, services, database_url)
    job_id = await submit(nc, json.dumps({"name": "too-big", "resources": {"cpu": 1000}}).encode())
    await page.goto(console.url)
    await connected(page)
    await page.fill("#job-id", job_id)
    await page.click("#job-search button")
    detail = page.locator("#job-detail")
    await expect(detail.locator("h3")).to_contain_text(job_id, timeout=WAIT_MS)
    await expect(detail.locator("h3 .state")).to_have_text("rejected", timeout=WAIT_MS)
    await expect(detail.locator("[data-explanation]")).to_contain_text("cpu")  # the rejection's reason
    await page.fill("#job-id", "no-such-job")
    await page.click("#job-search button")
    await expect(detail.locator('[data-job-missing="no-such-job"]')).to_have_text("no job no-such-job")


async def test_a_wrong_password_is_shown_as_such_and_retried(
    nats_server: NatsServer, serve: Serve, page: Page, tmp_path: Path
) -> None:
    wrong = serve((nats_server.websocket_url,), pw="not-the-console-password")
    await page.goto(wrong.url)
    banner = page.locator("#banner")
    await expect(banner).to_have_attribute("data-state", "error", timeout=WAIT_MS)
    await expect(banner).to_contain_text("refused the console's credentials")
    await expect(page.locator("#conn")).to_have_text("offline")
    await expect(page.locator("#fleet h2")).to_be_visible()  # never a blank page
    await expect(banner).to_contain_text("Attempt 2 failed", timeout=WAIT_MS)  # it tries again
    await expect(banner).to_contain_text("refused the console's credentials")
    await page.screenshot(path=tmp_path / "console-refused.png", full_page=True)


async def test_an_unreachable_nats_is_shown_and_the_page_connects_once_it_is_up(
    serve: Serve, page: Page, tmp_path: Path
) -> None:
    ws_port = free_port()
    console = serve((f"ws://127.0.0.1:{ws_port}",))
    await page.goto(console.url)
    banner = page.locator("#banner")
    await expect(banner).to_contain_text("cannot reach NATS", timeout=WAIT_MS)
    await expect(page.locator("#conn")).to_have_text("offline")
    server = NatsServer(REPO / "nats.conf", websocket_port=ws_port, store_dir=tmp_path / "js", log_dir=tmp_path)
    await asyncio.to_thread(server.start)
    try:
        await connected(page)
        await expect(banner).to_be_hidden()
        await asyncio.to_thread(server.stop)  # and when it goes away again, and comes back
        await expect(banner).to_have_attribute("data-state", "error", timeout=WAIT_MS)
        await expect(page.locator("#conn")).to_have_text("offline")
        await asyncio.to_thread(server.start)
        await connected(page)
    finally:
        await asyncio.to_thread(server.stop)
