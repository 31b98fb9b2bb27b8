"""``python -m services.provisioner``: consumes ``placement.decided``, launches dedicated clusters,
resizes them (later revisions) and heals them (checks their instances against EC2, replaces the lost ones)."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec

from schemas import events as ev
from schemas import subjects as s
from schemas.lifecycle import JobLifecycle
from services.cloud.ec2 import Ec2
from services.cloud.records import JobRecords, lifecycle_bucket
from services.provisioner.handlers import Provisioner, not_dedicated
from services.provisioner.healer import Healer, StreamClaims
from services.provisioner.healing import running_dedicated
from services.provisioner.scaling import Revisions
from services.runtime.app import Runtime, run
from services.runtime.consumer import Consumer
from services.runtime.publisher import Publisher

decoder = msgspec.json.Decoder(ev.PlacementDecided)
lost_decoder = msgspec.json.Decoder(ev.ClusterInstanceLost)


async def main(rt: Runtime) -> None:
    conf = rt.config.aws
    spec = msgspec.structs.replace(s.PROVISIONER_DECISIONS, ack_wait_s=conf.ack_wait_s)
    repairs_spec = msgspec.structs.replace(s.PROVISIONER_REPAIRS, ack_wait_s=conf.ack_wait_s)
    records = JobRecords(await lifecycle_bucket(rt.js, rt.settings.stream_replicas))

    async def record(job_id: str) -> JobLifecycle | None:
        return (await records.get(job_id))[0]

    async with contextlib.AsyncExitStack() as stack:  # stopped in reverse: endpoints, then EC2
        ec2 = await stack.enter_async_context(Ec2.open(rt.settings, conf))
        provisioner = Provisioner(ec2, Publisher(rt.js), records.ended, conf, max_deliver=spec.max_deliver)
        # a revision waits for the one before: at most a launch's wait for running, twice
        revisions = Revisions(provisioner, record, wait_s=2 * conf.running_timeout_s)
        healer = Healer(provisioner, ec2, StreamClaims(rt.js), record, check_s=rt.config.timeouts.instance_check_s)
        await stack.enter_async_context(
            rt.micro_service(
                "Launches a dedicated cluster of EC2 instances per dedicated job, and heals it",
                (spec, repairs_spec),
                project=conf.project,
            )
        )
        consumer = Consumer(
            rt.js, spec, decoder, revisions.on_decided, service="provisioner", batch=16, skip=not_dedicated
        )
        repairs = Consumer(rt.js, repairs_spec, lost_decoder, healer.on_lost, service="provisioner", batch=16)
        caught_up = asyncio.Event()
        follower = asyncio.create_task(records.follow(running_dedicated, healer.running, caught_up))
        stack.callback(follower.cancel)
        rt.log.info("started", endpoint=rt.settings.aws_endpoint_url or "aws")
        await asyncio.gather(consumer.run(rt.stop), repairs.run(rt.stop), healer.check_loop(rt.stop, caught_up))


if __name__ == "__main__":
    run("provisioner", main)
