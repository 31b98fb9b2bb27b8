"""In-process placement instances against a test's nats-server, each with its own connection (the
``instances`` fixture of tests/conftest.py stops them at the end)."""

from __future__ import annotations

import asyncio

from services.placement.service import Placement
from services.runtime.app import Runtime, start_runtime
from services.runtime.config import load_config, load_settings
from services.runtime.credentials import client_environ


class Instances:
    """In-process placement instances, each with its own connection, stopped at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runtimes: list[Runtime] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> Placement:
        """One more instance: nodes followed, ledger replayed, its decider running."""
        settings = load_settings({"NATS_URL": self.url, "LOG_LEVEL": "warning", **client_environ()})
        rt = await start_runtime("placement", settings, load_config())
        self.runtimes.append(rt)
        p = Placement(rt)
        await p.follow_nodes()
        await p.replay_ledger()
        self.tasks.append(asyncio.create_task(p.decider_loop()))
        return p

    async def stop(self, p: Placement) -> None:
        p.rt.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await p.rt.nc.close()

    async def close(self) -> None:
        """Stop every instance still running."""
        for rt in self.runtimes:
            rt.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for rt in self.runtimes:
            if not rt.nc.is_closed:
                await rt.nc.close()
