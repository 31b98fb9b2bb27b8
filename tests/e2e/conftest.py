"""Fixtures of the browser tests: the system's Chromium driven by Playwright, and the console's page served
for the test's nats-server. Browser downloads are impossible here, so Playwright launches Debian's
``chromium`` package; without it these tests fail with how to install it, never skip."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from services.console import ConsoleServer
from services.console.config import encode, page_config
from services.devstack import NatsServer
from services.runtime.config import Timeouts
from services.runtime.credentials import password
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError as err:  # pragma: no cover - a broken venv, reported by every test
    _MISSING: str | None = f"playwright is not installed ({err}): `make venv` installs the dev extras"
else:
    _MISSING = None
    expect.set_options(timeout=20_000)  # an upper bound on waiting for the page, not a sleep: on a busy machine

Serve = Callable[..., ConsoleServer]
"""``serve(servers=(url,), password=..., timeouts=...)``: the console page for those websocket URLs."""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if _MISSING:
        pytest.fail(_MISSING)
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); .ci/run does")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    p = await context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield p
    finally:
        await context.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    started: list[ConsoleServer] = []

    def start(servers: tuple[str, ...], pw: str | None = None, timeouts: Timeouts | None = None) -> ConsoleServer:
        config = page_config(servers, "console", pw or password("console"), timeouts or Timeouts())
        server = ConsoleServer(encode(config), log_dir=tmp_path / f"console-{len(started)}")
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def console(nats_server: NatsServer, serve: Serve) -> ConsoleServer:
    """The page, for the test's nats-server (its websocket listener), as the console user."""
    return serve((nats_server.websocket_url,))
