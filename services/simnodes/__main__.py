"""``python -m services.simnodes [--count N] [--interval S] [--prefix P] [--offset K] [--churn C]``: publish a simulated
fleet's status. A second fleet with its own ``--prefix`` or ``--offset``, stopped with Ctrl-C, is a way to lose
nodes by hand (they fall silent: lost after ``timeouts.node_lost_s``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from schemas import events as ev
from services.runtime.app import connect
from services.runtime.backoff import sleep_unless
from services.runtime.config import load_settings
from services.runtime.log import configure
from services.simnodes.fleet import Fleet, per_slice


async def publish_forever(
    count: int, interval: float, seed: int, prefix: str = "node", offset: int = 0, churn: float = 1.0
) -> None:
    settings = load_settings()
    log = configure("simnodes", settings.log_format, settings.log_level)
    async with contextlib.AsyncExitStack() as stack:
        nc = await connect(settings, "simnodes")
        stack.push_async_callback(nc.drain)
        stop = asyncio.Event()  # signals handled once connected: until then SIGTERM just ends the process
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        fleet = Fleet(count, seed, prefix, offset, churn)
        log.info("publishing node status", nodes=count, interval_s=interval, churn=churn)
        # The whole fleet at once first (placement knows every node at start-up), then spread
        # evenly over each interval: a fleet reporting in one burst every few seconds would
        # stall its consumers periodically, which no real, unsynchronised fleet does.
        for status in fleet.tick():
            await nc.publish(ev.subject_of(status), ev.encode(status))
        await nc.flush()
        step = min(0.05, interval)
        n = per_slice(count, interval, step)
        i = 0
        next_at = loop.time() + step
        while not stop.is_set():
            await sleep_unless(stop, max(0.0, next_at - loop.time()))
            next_at += step
            for _ in range(n):
                status = fleet.status(i)
                i = (i + 1) % count
                await nc.publish(ev.subject_of(status), ev.encode(status))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=int(os.environ.get("SIM_NODES", "50")))
    parser.add_argument("--interval", type=float, default=float(os.environ.get("SIM_INTERVAL_S", "3")))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--prefix", default="node", help="node ids are <prefix>-000, ... (several fleets side by side)")
    parser.add_argument("--offset", type=int, default=0, help="number the nodes from this one (default 0)")
    parser.add_argument(
        "--churn",
        type=float,
        default=float(os.environ.get("SIM_CHURN", "1")),
        help="chance that a node's free figures changed since its last report (default 1: always)",
    )
    a = parser.parse_args()
    asyncio.run(publish_forever(a.count, a.interval, a.seed, a.prefix, a.offset, a.churn))


if __name__ == "__main__":
    main()
