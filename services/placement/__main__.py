"""``python -m services.placement``"""

from __future__ import annotations

import asyncio

from schemas import subjects as s
from services.placement.service import Placement
from services.runtime.app import VERSION, Runtime, run
from services.runtime.micro import MicroService


async def main(rt: Runtime) -> None:
    p = Placement(rt)
    svc = MicroService(
        rt.nc,
        name="placement",
        version=VERSION,
        description="Filters and ranks nodes, reserves capacity, decides placements",
        metadata=rt.metadata(consumers=f"{s.JOBS.name}/{s.PLACEMENT_JOBS.durable}"),
    )
    await svc.start()
    await p.follow_nodes()
    await p.replay_ledger()
    decider = asyncio.create_task(p.decider_loop())
    retry = asyncio.create_task(p.retry_loop())
    rt.log.info("started")
    await p.consumer().run(rt.stop)
    await retry
    await decider
    rt.log.info("placement stats", **p.stats)
    await svc.stop()


if __name__ == "__main__":
    run("placement", main)
