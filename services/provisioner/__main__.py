"""``python -m services.provisioner``: consumes ``placement.decided``, launches dedicated clusters."""

from __future__ import annotations

import contextlib

import msgspec

from schemas import events as ev
from schemas import subjects as s
from services.cloud.ec2 import Ec2
from services.cloud.records import JobRecords, lifecycle_bucket
from services.provisioner.handlers import Provisioner, not_dedicated
from services.runtime.app import VERSION, Runtime, run
from services.runtime.consumer import Consumer
from services.runtime.micro import MicroService
from services.runtime.publisher import Publisher

decoder = msgspec.json.Decoder(ev.PlacementDecided)


async def main(rt: Runtime) -> None:
    conf = rt.config.aws
    spec = msgspec.structs.replace(s.PROVISIONER_DECISIONS, ack_wait_s=conf.ack_wait_s)
    records = JobRecords(await lifecycle_bucket(rt.js, rt.settings.stream_replicas))
    async with contextlib.AsyncExitStack() as stack:  # stopped in reverse: endpoints, then EC2
        ec2 = await stack.enter_async_context(Ec2.open(rt.settings, conf))
        provisioner = Provisioner(ec2, Publisher(rt.js), records.ended, conf, max_deliver=spec.max_deliver)
        await stack.enter_async_context(
            MicroService(
                rt.nc,
                name="provisioner",
                version=VERSION,
                description="Launches a dedicated cluster of EC2 instances per dedicated job",
                metadata=rt.metadata(consumers=f"{spec.stream}/{spec.durable}", project=conf.project),
            )
        )
        consumer = Consumer(
            rt.js, spec, decoder, provisioner.on_decided, service="provisioner", batch=16, skip=not_dedicated
        )
        rt.log.info("started", endpoint=rt.settings.aws_endpoint_url or "aws")
        await consumer.run(rt.stop)


if __name__ == "__main__":
    run("provisioner", main)
