"""``python -m services.gateway``"""

from __future__ import annotations

import contextlib

from schemas import subjects as s
from services.gateway.admission import Admission
from services.gateway.handlers import MAX_BODY, Decisions, Gateway
from services.gateway.lifecycle import SNAPSHOT_OWNER, SNAPSHOT_VERSION, JobStates, Lifecycle
from services.gateway.relay import Relay
from services.gateway.scale import Scaler
from services.runtime.app import Runtime, background, run
from services.runtime.backoff import sleep_unless
from services.runtime.micro import Endpoint
from services.runtime.publisher import Publisher
from services.runtime.snapshots import Snapshots
from services.runtime.streams import ensure_consumer


async def main(rt: Runtime) -> None:
    decisions = Decisions(rt.nc)
    admission = Admission(rt.js, rt.config.admission)
    gw = Gateway(Publisher(rt.js), rt.config, decisions, admission)

    async def drop_idle_subscriptions() -> None:
        while not await sleep_unless(rt.stop, 10):
            await decisions.drop_idle()
        await decisions.drop_idle()

    states = JobStates(rt.config.retention.ended_keep_s)
    async with contextlib.AsyncExitStack() as stack:  # stopped in reverse: endpoints first
        background(stack, rt.stop, drop_idle_subscriptions())
        background(stack, rt.stop, admission.run(rt.stop))
        # each tenant job's placement events, copied into TENANT_PLACEMENTS (§8.4, §8.6); its
        # durable declared before the micro service names it in its metadata
        await ensure_consumer(rt.js, s.TENANT_RELAY)
        background(stack, rt.stop, Relay(rt.js).consumer().run(rt.stop))
        # the job-state view: from its snapshot plus the tail, forgetting ended jobs after the
        # window; the maintainer saves it once more at a clean stop (before the unsubscribe)
        snaps = await Snapshots.open(rt.js, SNAPSHOT_OWNER, SNAPSHOT_VERSION, rt.settings.stream_replicas)
        await states.start(rt.js, snaps)
        stack.push_async_callback(states.stop)
        sync_timeout = rt.config.lifecycle.state_sync_timeout_s
        background(stack, rt.stop, states.maintain(rt.js, snaps, rt.config.retention, rt.stop, sync_timeout))
        lifecycle = Lifecycle(rt.js, Publisher(rt.js), states, rt.config.lifecycle.state_sync_timeout_s)
        scaler = Scaler(lifecycle, rt.config.limits.max_replicas)
        svc = await stack.enter_async_context(
            rt.micro_service(
                "Request-reply front door: submits, ends and resizes jobs; answers placement requests;"
                " relays tenants' placement events",
                (s.TENANT_RELAY,),
            )
        )
        await svc.add_endpoints(
            (
                Endpoint("submit", s.JOB_SUBMIT, gw.submit, {"request": "JobSpec", "reply": "{job_id, state}"}),
                Endpoint(
                    "placement_request",
                    s.PLACEMENT_REQUEST,
                    gw.placement_request,
                    {"request": "JobSpec", "reply": "placement.decided | placement.failed | job.rejected event"},
                ),
                Endpoint("cancel", s.JOB_CANCEL, lifecycle.cancel, {"request": "{job_id}", "reply": "{job_id, state}"}),
                Endpoint(
                    "complete",
                    s.JOB_COMPLETE,
                    lifecycle.complete,
                    {"request": "{job_id, outcome, message?}", "reply": "{job_id, state}"},
                ),
                Endpoint(
                    "scale",
                    s.JOB_SCALE,
                    scaler.scale,
                    {"request": "{job_id, replicas, request_id?}", "reply": "{job_id, replicas, state}"},
                ),
            ),
            max_body=MAX_BODY,
        )
        rt.log.info("started")
        await rt.stop.wait()


if __name__ == "__main__":
    run("gateway", main)
