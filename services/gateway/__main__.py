"""``python -m services.gateway``"""

from __future__ import annotations

from schemas import subjects as s
from services.gateway.handlers import MAX_BODY, Decisions, Gateway
from services.runtime.app import VERSION, Runtime, run
from services.runtime.bus import Publisher
from services.runtime.micro import MicroService


async def main(rt: Runtime) -> None:
    decisions = Decisions()
    gw = Gateway(Publisher(rt.js), rt.config, decisions)
    subs = [await rt.nc.subscribe(subject, cb=decisions.on_event) for subject in Decisions.SUBJECTS]
    svc = MicroService(
        rt.nc,
        name="gateway",
        version=VERSION,
        description="Request-reply front door: submits jobs and answers placement requests",
        metadata=rt.metadata(),
    )
    await svc.start()
    await svc.add_endpoint(
        "submit",
        s.JOB_SUBMIT,
        gw.submit,
        max_body=MAX_BODY,
        metadata={"request": "JobSpec", "reply": "{job_id, state}"},
    )
    await svc.add_endpoint(
        "placement_request",
        s.PLACEMENT_REQUEST,
        gw.placement_request,
        max_body=MAX_BODY,
        metadata={"request": "JobSpec", "reply": "placement.decided | placement.failed | job.rejected event"},
    )
    rt.log.info("started")
    await rt.stop.wait()
    await svc.stop()
    for sub in subs:
        await sub.unsubscribe()


if __name__ == "__main__":
    run("gateway", main)
