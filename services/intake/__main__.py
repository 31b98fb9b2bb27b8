"""``python -m services.intake``: consumes ``job.submitted``, publishes the verdict."""

from __future__ import annotations

import msgspec
import structlog

from schemas import events as ev
from schemas import subjects as s
from services.intake.policy import admit
from services.runtime.app import VERSION, Runtime, run
from services.runtime.bus import Publisher
from services.runtime.config import Config
from services.runtime.consumer import Consumer, Delivery
from services.runtime.micro import MicroService

decoder = msgspec.json.Decoder(ev.JobSubmitted)


def verdict_event(event: ev.JobSubmitted, config: Config) -> ev.JobAccepted | ev.JobRejected:
    v = admit(event.spec, config)
    if v.accepted:
        return ev.JobAccepted(
            event_id=ev.event_id_for(event.job_id, s.JOB_ACCEPTED),
            job_id=event.job_id,
            spec=event.spec,
            submitted_at=event.at,
        )
    return ev.JobRejected(
        event_id=ev.event_id_for(event.job_id, s.JOB_REJECTED), job_id=event.job_id, reason=v.reason, field=v.field
    )


async def main(rt: Runtime) -> None:
    publisher = Publisher(rt.js)

    async def on_submitted(event: ev.JobSubmitted, _: Delivery) -> None:
        out = verdict_event(event, rt.config)
        structlog.get_logger().debug("verdict", job_id=event.job_id, type=out.__struct_config__.tag)
        await publisher.publish(out)

    svc = MicroService(
        rt.nc,
        name="intake",
        version=VERSION,
        description="Admission policy for submitted jobs",
        metadata=rt.metadata(consumers=f"{s.JOBS.name}/{s.INTAKE_JOBS.durable}"),
    )
    await svc.start()
    consumer = Consumer(rt.js, s.INTAKE_JOBS, decoder, on_submitted, service="intake")
    rt.log.info("started")
    await consumer.run(rt.stop)
    await svc.stop()


if __name__ == "__main__":
    run("intake", main)
