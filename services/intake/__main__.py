"""``python -m services.intake``: consumes ``job.submitted``, publishes the verdict.

A fetched batch is judged in one go, its verdicts published pipelined (every ack
awaited), and only then are the inputs acked. If JetStream cannot store the verdicts
the batch is held and retried (deterministic event ids make a re-publish a duplicate
the stream drops).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import nats.errors
import nats.js.errors

from schemas import events as ev
from schemas import subjects as s
from services.intake.policy import admit
from services.runtime.app import Runtime, run
from services.runtime.batch import BatchConsumer
from services.runtime.config import Config
from services.runtime.delivery import Delivery
from services.runtime.publisher import Publisher

decoder = msgspec.json.Decoder(ev.JobSubmitted)


def verdict_event(event: ev.JobSubmitted, config: Config) -> ev.JobAccepted | ev.JobRejected:
    v = admit(event.spec, config)
    if v.accepted:
        return ev.JobAccepted(
            event_id=ev.event_id_for(event.job_id, s.JOB_ACCEPTED),
            job_id=event.job_id,
            spec=event.spec,
            submitted_at=event.at,
            tenant=event.tenant,
        )
    return ev.JobRejected(
        event_id=ev.event_id_for(event.job_id, s.JOB_REJECTED), job_id=event.job_id, reason=v.reason, field=v.field
    )


def is_transient(e: BaseException) -> bool:
    """JetStream unavailable or slow: hold the batch and retry, never dead-letter it."""
    return isinstance(e, (TimeoutError, nats.errors.Error, nats.js.errors.Error))


async def main(rt: Runtime) -> None:
    publisher = Publisher(rt.js)

    async def on_batch(items: Sequence[tuple[ev.JobSubmitted, Delivery]]) -> None:
        await publisher.publish_many([verdict_event(event, rt.config) for event, _ in items])

    consumer = BatchConsumer(
        rt.js, s.INTAKE_JOBS, decoder, on_batch, service="intake", batch=512, transient=is_transient
    )
    async with rt.micro_service("Admission policy for submitted jobs", (s.INTAKE_JOBS,)):
        rt.log.info("started")
        await consumer.run(rt.stop)


if __name__ == "__main__":
    run("intake", main)
