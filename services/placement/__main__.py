"""``python -m services.placement``: node table and ledger first, then decisions.

Start-up order: the node snapshot, the drain facts, the ledger (its snapshot, then the tail of
PLACEMENTS; no job is decided before the ledger has caught up with the stream), the tenants' run-time quotas (bucket
``QUOTAS``, then followed), then the micro service with its ``node.drain`` /
``node.undrain`` / ``placement.plan`` / ``quota.*`` / ``tenant.usage`` endpoints (so
``$SRV.PING.placement`` answers only once they do: a ping is the readiness signal tests and
operators wait on), then the decider, the retry loop, the fleet
loop (lost and drained nodes, degraded jobs) and the scale consumer, and last the job
consumer. On SIGTERM the stack unwinds in reverse: the consumers stop fetching, the loops
end, the decider commits what is queued, the ledger's snapshot is saved, the endpoints stop.
"""

from __future__ import annotations

import contextlib

from schemas import subjects as s
from services.placement.plan import MAX_BODY as PLAN_MAX_BODY
from services.placement.service import Placement
from services.placement.tenants import MAX_BODY as TENANTS_MAX_BODY
from services.runtime.app import Runtime, background, run
from services.runtime.micro import Endpoint


async def main(rt: Runtime) -> None:
    p = Placement(rt)
    async with contextlib.AsyncExitStack() as stack:
        await p.follow_nodes()
        drains = await p.follow_drains()
        stack.push_async_callback(drains.unsubscribe)  # type: ignore[attr-defined]
        await p.replay_ledger()
        quotas = await p.follow_quotas()

        async def stop_quotas() -> None:
            rt.stop.set()
            await quotas

        stack.push_async_callback(stop_quotas)
        svc = await stack.enter_async_context(
            rt.micro_service(
                "Filters and ranks nodes, reserves capacity, decides placements", (s.PLACEMENT_JOBS, s.PLACEMENT_SCALES)
            )
        )
        for name, subject, handler in (
            ("drain", s.NODE_DRAIN, p.drains.drain),
            ("undrain", s.NODE_UNDRAIN, p.drains.undrain),
        ):
            await svc.add_endpoint(name, subject, handler, max_body=64 * 1024)
        plan = Endpoint("plan", s.PLACEMENT_PLAN, p.planner.handle, {"request": "JobSpec", "reply": "PlanReply"})
        await svc.add_endpoints([plan], max_body=PLAN_MAX_BODY)  # tenants too, through their imports
        await svc.add_endpoints(p.tenants.endpoints(), max_body=TENANTS_MAX_BODY)

        async def log_stats() -> None:  # once the decider has finished
            rt.log.info("placement stats", **p.stats)

        stack.push_async_callback(log_stats)
        stack.push_async_callback(p.final_snapshot)  # after the decider has committed what was queued
        background(stack, rt.stop, p.snapshot_loop())
        background(stack, rt.stop, p.decider_loop())
        background(stack, rt.stop, p.retry_loop())
        background(stack, rt.stop, p.fleet_loop())
        background(stack, rt.stop, p.scale_consumer().run(rt.stop))
        rt.log.info("started")
        await p.consumer().run(rt.stop)


if __name__ == "__main__":
    run("placement", main)
