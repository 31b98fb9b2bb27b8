"""``python -m services.placement``: node table and ledger first, then decisions.

Start-up order: the micro service, the node snapshot, the ledger replay (no job is
decided before the ledger has caught up with PLACEMENTS), then the decider and the
retry loop, and last the job consumer. On SIGTERM the stack unwinds in reverse: the
consumer stops fetching, the retry loop ends, the decider commits what is queued, the
endpoints stop.
"""

from __future__ import annotations

import contextlib

from schemas import subjects as s
from services.placement.service import Placement
from services.runtime.app import VERSION, Runtime, background, run
from services.runtime.micro import MicroService


async def main(rt: Runtime) -> None:
    p = Placement(rt)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            MicroService(
                rt.nc,
                name="placement",
                version=VERSION,
                description="Filters and ranks nodes, reserves capacity, decides placements",
                metadata=rt.metadata(consumers=f"{s.JOBS.name}/{s.PLACEMENT_JOBS.durable}"),
            )
        )
        await p.follow_nodes()
        await p.replay_ledger()

        async def log_stats() -> None:  # once the decider has finished
            rt.log.info("placement stats", **p.stats)

        stack.push_async_callback(log_stats)
        background(stack, rt.stop, p.decider_loop())
        background(stack, rt.stop, p.retry_loop())
        rt.log.info("started")
        await p.consumer().run(rt.stop)


if __name__ == "__main__":
    run("placement", main)
