"""Placement restarted from its ledger snapshot against a real nats-server: only the tail after
the snapshot is folded, the ledger equals the stream's, and decisions made afterwards never
double-book; a corrupt snapshot falls back to a full replay, still correct."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Defaults, decode_job_request, normalise
from services.placement import snapshot as snap
from services.placement.decider import Pending
from services.placement.service import Placement
from services.runtime.publisher import Publisher
from tests.support.events import node
from tests.support.instances import Instances
from tests.support.invariants import check_live

pytestmark = pytest.mark.integration

SPEC = normalise(decode_job_request(b'{"name": "x", "resources": {"cpu": 1, "memory_mb": 256}}'), Defaults())


async def decide(p: Placement, *job_ids: str) -> list[str]:
    loop = asyncio.get_running_loop()
    now = datetime.now(UTC)
    pending = [
        Pending(
            ev.JobAccepted(event_id=f"{j}:a", job_id=j, spec=SPEC, submitted_at=now),
            None,  # type: ignore[arg-type]  # no delivery: the decider never acks
            loop.time() + 60,
            i,
        )
        for i, j in enumerate(job_ids)
    ]
    return list(await asyncio.gather(*(p.decide(x) for x in pending)))


def booked(p: Placement) -> dict[str, float]:
    return {nid: n.reserved_cpu for nid, n in p.world.nodes.items() if n.reserved_cpu}


async def wait_for_nodes(p: Placement, *node_ids: str) -> None:
    async def known() -> None:
        while not all(n in p.world.nodes for n in node_ids):  # noqa: ASYNC110 (in-process state)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(known(), 10)


async def test_a_restart_folds_only_the_tail_after_the_snapshot(nc: Client, instances: Instances) -> None:
    js = nc.jetstream()
    first = await instances.start()  # declares the streams
    for nid in ("n1", "n2"):
        await node(nc, nid, 4)  # room for 8 one-cpu jobs
    await wait_for_nodes(first, "n1", "n2")
    assert await decide(first, *(f"s{i}" for i in range(4))) == ["decided"] * 4
    await first.ledger.catch_up(first.decider.tail)
    assert await first.save_snapshot()
    # the tail: two more decisions and one release of a job in the snapshot
    assert await decide(first, "t0", "t1") == ["decided"] * 2
    release = ev.PlacementReleased(event_id=ev.event_id_for("s0", s.PLACEMENT_RELEASED), job_id="s0")
    ack = await Publisher(js).publish(release)
    await first.ledger.catch_up(ack.seq)
    before = booked(first)
    await instances.stop(first)

    second = await instances.start()

    assert second.restart == {"from_snapshot": True, "folded": 3}  # t0, t1 and the release, not the 4 before
    assert set(second.world.reservations) == {"s1", "s2", "s3", "t0", "t1"}
    assert "s0" in second.world.released and "s0" in second.ledger.decided
    await wait_for_nodes(second, "n1", "n2")
    assert booked(second) == before and sum(before.values()) == 5.0
    assert second.decider.tail == (await js.stream_info(s.PLACEMENTS.name)).state.last_seq
    assert second.ledger.accounts.used(s.DEFAULT_TENANT).jobs == 5

    outcomes = await decide(second, *(f"u{i}" for i in range(5)))  # room for 3 more

    assert sorted(outcomes) == ["decided"] * 3 + ["pending"] * 2
    report = await check_live(js, require_release=False)
    assert report.ok, report
    assert report.overbooked == []


async def test_a_corrupt_snapshot_falls_back_to_a_full_replay(nc: Client, instances: Instances) -> None:
    js = nc.jetstream()
    first = await instances.start()
    await node(nc, "n1", 4)
    await wait_for_nodes(first, "n1")
    assert await decide(first, "a", "b") == ["decided"] * 2
    await first.ledger.catch_up(first.decider.tail)
    assert await first.save_snapshot()
    await instances.stop(first)
    store = await js.object_store(s.SNAPSHOTS.name)
    for slot in ("a", "b"):
        await store.put(f"{snap.OWNER}.{slot}", b"\x00not a snapshot")

    second = await instances.start()

    assert second.restart == {"from_snapshot": False, "folded": 2}
    assert set(second.world.reservations) == {"a", "b"}
    assert await decide(second, "c", "d", "e") == ["decided", "decided", "pending"]
    report = await check_live(js, require_release=False)
    assert report.ok and report.overbooked == [], report


async def test_a_snapshot_whose_tail_left_the_stream_is_not_used(nc: Client, instances: Instances) -> None:
    js = nc.jetstream()
    first = await instances.start()
    await node(nc, "n1", 4)
    await wait_for_nodes(first, "n1")
    assert await decide(first, "a") == ["decided"]
    await first.ledger.catch_up(first.decider.tail)
    assert await first.save_snapshot()
    assert await decide(first, "b", "c") == ["decided"] * 2
    await instances.stop(first)
    await js.purge_stream(s.PLACEMENTS.name, seq=3)  # "b" aged out before the restart: only "c" is left

    second = await instances.start()

    assert second.restart == {"from_snapshot": False, "folded": 1}
    assert set(second.world.reservations) == {"c"}
