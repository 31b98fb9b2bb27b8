"""``python -m services.teardown``: releases ended jobs exactly once, expires jobs, reaps orphans."""

from __future__ import annotations

import asyncio
import contextlib

from schemas import subjects as s
from services.cloud.ec2 import Ec2
from services.cloud.records import lifecycle_bucket
from services.runtime.app import Runtime, run
from services.runtime.consumer import Consumer
from services.runtime.publisher import Publisher
from services.teardown.domain import TeardownEvent, nothing_to_track
from services.teardown.service import Teardown, decoder
from services.teardown.store import LifecycleStore

SPECS = (s.TEARDOWN_JOBS, s.TEARDOWN_PLACEMENTS, s.TEARDOWN_CLUSTERS)


def job_of(event: TeardownEvent) -> str:
    return event.job_id


async def main(rt: Runtime) -> None:
    store = LifecycleStore(await lifecycle_bucket(rt.js, rt.settings.stream_replicas))
    async with contextlib.AsyncExitStack() as stack:  # stopped in reverse: endpoints, then EC2
        ec2 = await stack.enter_async_context(Ec2.open(rt.settings, rt.config.aws))
        td = Teardown(store, ec2, Publisher(rt.js), rt.config.lifecycle, retention=rt.config.retention)
        await stack.enter_async_context(
            rt.micro_service(
                "Ends jobs exactly once: terminates instances, releases reservations, expiry, orphan reaper", SPECS
            )
        )
        # JOBS in stream order per job, so a job's accepted is recorded before its end trigger;
        # different jobs of a batch in parallel (each event waits on KV round trips: one job at a
        # time left teardown behind at 150 jobs/s on a busy machine). Batched fetches all the
        # same: one pull request per message cost more than the handling.
        consumers = [
            Consumer(
                rt.js,
                spec,
                decoder,
                td.on_event,
                service="teardown",
                batch=64,
                in_order=spec is s.TEARDOWN_JOBS,
                order_key=job_of,
                skip=nothing_to_track,
            )
            for spec in SPECS
        ]
        rt.log.info("started", endpoint=rt.settings.aws_endpoint_url or "aws")
        await asyncio.gather(
            *(c.run(rt.stop) for c in consumers),
            td.expiry_loop(rt.stop),
            td.reaper_loop(rt.stop),
            td.retention_loop(rt.stop),
        )


if __name__ == "__main__":
    run("teardown", main)
