"""Two placement instances decide the same job (one stalled past ack_wait while the job was
redelivered to the other), against a real nats-server: the stream and every ledger agree, no
node is over-booked, and each job has one stored revision-1 decision (issue #21).

The stall is made exact in process: instance A's pipelined chain ``[j1, j2, j3]`` stops after
``j1`` is stored, B stores its own decision of ``j2`` (on a node A would not have chosen), then
A's ``j2`` and ``j3`` go out with the headers the chain gives them. ``j2`` is refused (wrong last
sequence); ``j3`` finds the sequence it expects, and must be refused by its expected last message
id. With message ids equal to event ids (before the fix) it was stored, decided on A's stale
ledger: the control test shows that overbooks. The process test stops a real placement process
(SIGSTOP) past ack_wait while it holds jobs, lets another take them, and resumes it (SIGCONT).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerInfo

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Defaults, decode_job_request, normalise
from services.placement import decider as decider_module
from services.placement.decider import Pending
from services.placement.ports import PlacementsStream
from services.placement.service import Placement
from services.runtime.publisher import Ack
from tests.support.api import job
from tests.support.config import config
from tests.support.events import free_node, node
from tests.support.instances import Instances
from tests.support.invariants import Report, check_live, read_events
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration

SPEC = normalise(decode_job_request(b'{"name": "x", "resources": {"cpu": 1, "memory_mb": 256}}'), Defaults())


class StallAfterFirst:
    """A's PLACEMENTS: its next chain of several messages stops after the first is stored
    (``stalled``) until ``go``; the rest then goes out with the chain's own headers (expected
    sequence ``base + i``, expected last message id of message ``i - 1``)."""

    def __init__(self, inner: PlacementsStream) -> None:
        self.inner = inner
        self.armed = True
        self.stalled = asyncio.Event()
        self.go = asyncio.Event()
        self.results: list[list[Ack | Exception]] = []

    async def publish_chain(
        self,
        events: Sequence[ev.Event],
        expected_last_seq: int,
        *,
        atomic: bool = False,
        msg_ids: Sequence[str] | None = None,
    ) -> list[Ack | Exception]:
        if not self.armed or len(events) < 3 or msg_ids is None:
            return await self.inner.publish_chain(events, expected_last_seq, atomic=atomic, msg_ids=msg_ids)
        self.armed = False
        first = await self.inner.publish_chain(events[:1], expected_last_seq, msg_ids=msg_ids[:1])
        self.stalled.set()
        await self.go.wait()
        # j2: refused by sequence whatever its last-msg-id header; j3: exactly the chain's headers
        rest = await self.inner.publish_chain(events[1:], expected_last_seq + 1, msg_ids=msg_ids[1:])
        self.results.append(first + rest)
        return first + rest

    async def last_seq(self) -> int:
        return await self.inner.last_seq()


def pending(job_id: str, order: int) -> Pending:
    accepted = ev.JobAccepted(event_id=f"{job_id}:a", job_id=job_id, spec=SPEC, submitted_at=datetime.now(UTC))
    return Pending(accepted, None, asyncio.get_running_loop().time() + 60, order)  # type: ignore[arg-type]


def booked(p: Placement) -> dict[str, float]:
    return {nid: n.reserved_cpu for nid, n in p.world.nodes.items() if n.reserved_cpu}


async def until(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 (in-process state)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def stalled_chain(nc: Client, instances: Instances) -> tuple[Placement, Placement, dict[str, str]]:
    """A decides [j1, j2, j3] and stalls after j1; B decides j2 meanwhile on a ledger where only
    n1 is active (so B's j2 goes to n1, where A's j3 went too); then A resumes."""
    a = await instances.start()
    b = await instances.start()
    for nid in ("n1", "n2"):
        await node(nc, nid, 2)
    await until(lambda: all(n in p.world.nodes for p in (a, b) for n in ("n1", "n2")))
    b.world.update_node(free_node("n2", 2, state="draining"), b.world.nodes["n2"].seen)  # B will not use n2
    stall = StallAfterFirst(a.decider.chain)  # type: ignore[arg-type]
    a.decider.chain = stall

    ours = asyncio.gather(*(a.decide(pending(j, i)) for i, j in enumerate(("j1", "j2", "j3"))))
    await asyncio.wait_for(stall.stalled.wait(), 10)  # A: j1 stored (on n1), j2 on n2 and j3 on n1 in flight
    assert await b.decide(pending("j2", 1)) == "decided"  # B (j2 redelivered to it): on n1
    stall.go.set()
    outcomes = dict(zip(("j1", "j2", "j3"), await asyncio.wait_for(ours, 20), strict=True))
    last = (await nc.jetstream().stream_info(s.PLACEMENTS.name)).state.last_seq
    for p in (a, b):
        await p.ledger.catch_up(last)
    return a, b, outcomes


async def test_a_stalled_instances_chain_never_stores_a_decision_made_on_its_stale_ledger(
    nc: Client, instances: Instances
) -> None:
    a, b, outcomes = await stalled_chain(nc, instances)

    assert outcomes == {"j1": "decided", "j2": "already", "j3": "decided"}
    decided = [e for e in await read_events(nc.jetstream()) if isinstance(e, ev.PlacementDecided)]
    assert sorted(e.job_id for e in decided if e.revision == 1) == ["j1", "j2", "j3"]  # one each
    report = await check_live(nc.jetstream(), require_release=False)
    assert report.ok and report.overbooked == [], report
    assert booked(a) == {"n1": 2.0, "n2": 1.0}  # j3 redone on the caught-up ledger: n2
    assert set(a.world.reservations) == set(b.world.reservations) == {"j1", "j2", "j3"}
    assert a.world.reservations["j2"].node_ids == b.world.reservations["j2"].node_ids == ("n1",)
    assert a.stats["conflicts"] == 2  # A's j2 (sequence) and j3 (last message id)


async def test_with_event_ids_as_message_ids_the_stall_overbooks(
    nc: Client, instances: Instances, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the scenario above reproduces the hole when message ids are the event ids."""

    def event_ids(events: list[ev.Event], attempt: str) -> list[str]:
        return [e.event_id for e in events]

    monkeypatch.setattr(decider_module, "attempt_ids", event_ids)

    await stalled_chain(nc, instances)

    report = await check_live(nc.jetstream(), require_release=False)
    assert report.overbooked == ["n1"], report


async def test_a_placement_process_stopped_past_ack_wait_and_resumed_never_double_decides(
    nc: Client, services: Spawn, tmp_path: Path
) -> None:
    """Jobs that fit nowhere are held by process A (in-progress pings); A is stopped (SIGSTOP)
    past ack_wait, so they are redelivered to B, which holds them too; A is resumed (SIGCONT)
    and capacity appears: both try the same jobs at the same moment. Each is decided once, and
    no node is over-booked."""
    env = config(tmp_path, placement_deadline_s=25, node_ttl_s=300)  # the 6 that do not fit fail then
    await services("gateway", "intake", env=env)
    (a,) = await services("placement", env=env)

    async def submit(i: int) -> str:
        reply = await nc.request(s.JOB_SUBMIT, job(f"held-{i}", 1, request_id=f"h-{i}"), timeout=10)
        return str(json.loads(reply.data)["job_id"])

    ids = [await submit(i) for i in range(12)]  # no node yet: A holds every one
    await wait_for(nc, lambda c: c.num_ack_pending == 12, timeout=30)
    os.kill(a.pid, signal.SIGSTOP)
    try:
        await services("placement", env=env)  # B
        await wait_for(nc, lambda c: (c.num_redelivered or 0) >= 12, timeout=60)  # ack_wait ran out: B holds them
    finally:
        os.kill(a.pid, signal.SIGCONT)
    for i in range(3):
        await node(nc, f"r{i}", 2)  # room for 6 of the 12, seen by both at once

    report = await settled(nc, ids, count=12)

    assert report.ok and report.overbooked == [], report
    assert (report.decided, report.failed) == (6, 6)
    stored = [e for e in await read_events(nc.jetstream()) if isinstance(e, ev.PlacementDecided | ev.PlacementFailed)]
    per_job = [e.job_id for e in stored if not isinstance(e, ev.PlacementDecided) or e.revision == 1]
    assert sorted(per_job) == sorted(ids)  # one decision or failure each


async def wait_for(nc: Client, ok: Callable[[ConsumerInfo], bool], timeout: float) -> None:
    """Until the ``placement`` consumer's info satisfies ``ok`` (polled: the server emits no event for it)."""
    js = nc.jetstream()

    async def poll() -> None:
        while not ok(await js.consumer_info(s.PLACEMENT_JOBS.stream, s.PLACEMENT_JOBS.durable)):  # noqa: ASYNC110 (server state)
            await asyncio.sleep(0.2)

    await asyncio.wait_for(poll(), timeout)


async def settled(nc: Client, ids: list[str], count: int, timeout: float = 60) -> Report:
    """The invariant report once ``count`` jobs are decided or failed (polled over the streams)."""

    async def poll() -> Report:
        while True:
            report = await check_live(nc.jetstream(), submitted_ids=ids, require_release=False)
            if report.decided + report.failed >= count:
                return report
            await asyncio.sleep(0.2)

    return await asyncio.wait_for(poll(), timeout)
