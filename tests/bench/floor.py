"""Topology floor: the contract's messages per job, with services that do no work.

Same nats.conf and credentials, streams, consumers and subjects (schemas.subjects), same
runtime (Consumer, BatchConsumer, Publisher, MicroService, direct delivery), same node
fleet and load generator as the pipeline benchmark; but every service only passes the job
on: the gateway publishes ``job.submitted``, intake accepts, placement decides on a fixed
node with ten made-up candidates, and the gateway's view, the ledger, metadata, teardown
and the provisioner receive and ack without doing anything else (no PostgreSQL, no EC2,
no placement engine). What this achieves is the most the message topology itself allows
on this machine in Python: the headroom left to any optimisation inside the services.

``python -m tests.bench floor``; a role alone: ``python -m tests.bench.floor <role>``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
from nats.js import api as js_api

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Defaults, decode_job_request, normalise
from services.devstack import _util
from services.devstack.procs import ServiceProcess, child_environ
from services.gateway.handlers import job_id_for
from services.gateway.lifecycle import VIEW_SUBJECTS
from services.metadata.projector import DECODERS
from services.provisioner.handlers import not_dedicated
from services.runtime import direct
from services.runtime.app import Runtime
from services.runtime.app import run as run_service
from services.runtime.batch import BatchConsumer
from services.runtime.consumer import Consumer
from services.runtime.delivery import Delivery
from services.runtime.micro import MicroService
from services.runtime.publisher import Publisher
from services.teardown.domain import nothing_to_track
from services.teardown.service import decoder as teardown_decoder
from tests.bench import pipeline
from tests.bench._table import table
from tests.support.servers import wait_for_services
from tests.support.system import system

ROLES = ("gateway", "intake", "placement", "metadata", "teardown", "provisioner")
RATES = [int(r) for r in os.environ.get("BENCH_FLOOR_RATES", "1500,3000").split(",")]
SPEC = normalise(decode_job_request(b'{"name": "floor", "resources": {"cpu": 0.1, "memory_mb": 64}}'), Defaults())
CANDIDATES = [ev.Candidate(node_id=f"node-{i}", cpu_free=7.5, memory_free_mb=30000) for i in range(10)]


class _Key(msgspec.Struct):
    request_id: str


_key = msgspec.json.Decoder(_Key)
_enc = msgspec.json.Encoder()


async def _noop(*_: Any) -> None:
    return None


async def _follow(rt: Runtime, stream: str, subjects: Sequence[str]) -> None:
    """An ordered consumer doing nothing, as the gateway's view and the placement ledger use."""
    await rt.js.subscribe(
        "",
        stream=stream,
        ordered_consumer=True,
        cb=_noop,
        deliver_policy=js_api.DeliverPolicy.NEW,
        config=js_api.ConsumerConfig(filter_subjects=list(subjects)),
    )


async def role_main(role: str, rt: Runtime) -> None:
    pub = Publisher(rt.js)
    svc = MicroService(rt.nc, name=f"floor-{role}", version="0.0.0", description="topology floor")
    await svc.start()
    runs: list[Any] = []
    if role == "gateway":

        async def submit(msg: Any) -> bytes:
            jid = job_id_for(_key.decode(msg.data).request_id)
            await pub.publish(ev.JobSubmitted(event_id=ev.event_id_for(jid, s.JOB_SUBMITTED), job_id=jid, spec=SPEC))
            return _enc.encode({"job_id": jid})

        await svc.add_endpoint("submit", s.JOB_SUBMIT, submit)
        for stream, subjects in VIEW_SUBJECTS.items():
            await _follow(rt, stream, subjects)
    elif role == "intake":

        async def accept(items: Sequence[tuple[ev.JobSubmitted, Delivery]]) -> None:
            await pub.publish_many(
                [
                    ev.JobAccepted(event_id=ev.event_id_for(e.job_id, s.JOB_ACCEPTED), job_id=e.job_id, spec=e.spec)
                    for e, _ in items
                ]
            )

        runs.append(BatchConsumer(rt.js, s.INTAKE_JOBS, msgspec.json.Decoder(ev.JobSubmitted), accept, service=role))
    elif role == "placement":

        async def decide(e: ev.JobAccepted, _: Delivery) -> None:
            await pub.publish(
                ev.PlacementDecided(
                    event_id=ev.event_id_for(e.job_id, s.PLACEMENT_DECIDED),
                    job_id=e.job_id,
                    cluster="shared",
                    technology="docker",
                    strategy="best_fit",
                    assignments=[ev.Assignment(replica=0, node_id="node-0")],
                    candidates=CANDIDATES,
                    resources=e.spec.resources,
                    max_runtime_s=None,
                )
            )

        await _follow(rt, s.PLACEMENTS.name, s.PLACEMENTS.subjects)
        await direct.subscribe(rt.nc, s.NODE_STATUS_ALL, lambda *_: None)
        runs.append(Consumer(rt.js, s.PLACEMENT_JOBS, msgspec.json.Decoder(ev.JobAccepted), decide, service=role))
    elif role == "metadata":
        runs += [
            BatchConsumer(rt.js, spec, DECODERS[spec.stream], _noop, service=role, in_flight=2)
            for spec in s.METADATA_CONSUMERS
        ]
    elif role == "teardown":
        runs += [
            Consumer(rt.js, spec, teardown_decoder, _noop, service=role, batch=64, skip=nothing_to_track)
            for spec in (s.TEARDOWN_JOBS, s.TEARDOWN_PLACEMENTS, s.TEARDOWN_CLUSTERS)
        ]
    elif role == "provisioner":
        runs.append(
            Consumer(
                rt.js,
                s.PROVISIONER_DECISIONS,
                msgspec.json.Decoder(ev.PlacementDecided),
                _noop,
                service=role,
                batch=16,
                skip=not_dedicated,
            )
        )
    await asyncio.gather(*(c.run(rt.stop) for c in runs), rt.stop.wait())
    await svc.stop()


async def run() -> dict[str, Any]:
    result: dict[str, Any] = {"nodes": pipeline.NODES, "open": []}
    async with system([], sim_nodes=pipeline.NODES, sim_interval=5.0) as (sysm, nc):
        for role in ROLES:
            log = sysm.tmp / f"floor-{role}.log"
            argv = [sys.executable, "-m", "tests.bench.floor", role]
            sysm.procs[role] = [ServiceProcess(role, _util.popen_logged(argv, log, env=child_environ(sysm.env)), log)]
        await wait_for_services(nc, [f"floor-{r}" for r in ROLES], timeout=60)
        col = pipeline.Collector()
        await col.subscribe(nc)
        await pipeline.warm_up(nc, col)
        for rate in RATES:
            r = await pipeline.measured_open_loop(sysm, nc, col, rate)
            r.pop("_lat", None)
            result["open"].append(r)
    return result


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"### Topology floor: the same messages per job, services doing no work ({r['nodes']} nodes)",
        "",
        *table(
            ["offered/s", "jobs/s", "p50 ms", "p99 ms", "errors", "CPU µs/job (total)", "steal %"],
            (
                [
                    *(x[k] for k in ("offered_per_s", "jobs_per_s", "p50_ms", "p99_ms", "errors")),
                    x["cpu_us_per_job"]["total"],
                    x["steal_pct"],
                ]
                for x in r["open"]
            ),
        ),
    ]
    lines += ["", "CPU µs per decided job, by process:", "", *pipeline.cpu_table(r["open"])]
    return "\n".join(lines)


if __name__ == "__main__":
    name = sys.argv[1]
    if name not in ROLES:
        raise SystemExit(f"role must be one of {', '.join(ROLES)}")
    run_service(f"floor-{name}", lambda rt: role_main(name, rt))
