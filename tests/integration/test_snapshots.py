"""Snapshots in the real SNAPSHOTS object store: two slots, the newest valid one wins."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta

from schemas import subjects as s
from services.runtime.snapshots import Envelope, Snapshots, seal

pytestmark = pytest.mark.integration


async def test_the_newest_generation_is_loaded_and_a_damaged_slot_falls_back_to_the_other(nc: Client) -> None:
    js = nc.jetstream()
    snaps = await Snapshots.open(js, "unit-owner", version=1)
    assert await snaps.load() is None  # first start: replay from the streams
    await snaps.save(b"first", {"PLACEMENTS": 10})
    await snaps.save(b"second", {"PLACEMENTS": 20})

    again = await Snapshots.open(js, "unit-owner", version=1)
    loaded = await again.load()
    assert loaded is not None and (loaded.body, loaded.seqs, loaded.generation) == (b"second", {"PLACEMENTS": 20}, 2)

    store = await js.object_store(s.SNAPSHOTS.name)
    await store.put("unit-owner.a", b"\x00garbage")  # generation 2 lives in slot a (2 % 2 == 0)
    fallback = await Snapshots.open(js, "unit-owner", version=1)
    loaded = await fallback.load()
    assert loaded is not None and (loaded.body, loaded.generation) == (b"first", 1)
    await fallback.save(b"third", {"PLACEMENTS": 30})  # generation 2 again, over the damaged slot
    loaded = await (await Snapshots.open(js, "unit-owner", version=1)).load()
    assert loaded is not None and loaded.body == b"third"


async def test_another_format_version_is_not_loaded(nc: Client) -> None:
    js = nc.jetstream()
    await (await Snapshots.open(js, "versioned", version=1)).save(b"old format", {"JOBS": 1})
    assert await (await Snapshots.open(js, "versioned", version=2)).load() is None


class _Counting(Snapshots):
    """Snapshots noting which slots it reads."""

    reads: list[str]

    async def _read(self, slot: str) -> Envelope | None:
        self.reads.append(slot)
        return await super()._read(slot)


async def _counting(js: JetStreamContext, owner: str) -> _Counting:
    c = _Counting(await js.object_store(s.SNAPSHOTS.name), owner, 1)
    c.reads = []
    return c


async def test_a_start_reads_only_the_newer_slot_unless_it_is_damaged(nc: Client) -> None:
    js = nc.jetstream()
    snaps = await Snapshots.open(js, "one-read", version=1)
    for body in (b"first", b"second", b"third"):  # generation 3 ends in slot b
        await snaps.save(body, {"PLACEMENTS": len(body)})

    c = await _counting(js, "one-read")
    loaded = await c.load()
    assert loaded is not None and (loaded.body, loaded.generation) == (b"third", 3) and c.reads == ["b"]

    store = await js.object_store(s.SNAPSHOTS.name)
    await store.put("one-read.b", b"\x00torn", meta=ObjectMeta(name="one-read.b", description="generation 3"))
    c = await _counting(js, "one-read")
    loaded = await c.load()
    assert loaded is not None and (loaded.body, loaded.generation) == (b"second", 2) and c.reads == ["b", "a"]


async def test_slots_written_before_generations_were_named_are_both_read(nc: Client) -> None:
    js = nc.jetstream()
    store = (await Snapshots.open(js, "legacy", version=1))._store
    at = datetime.now(UTC)
    await store.put("legacy.a", seal("legacy", 1, 4, {"JOBS": 4}, b"newer", at))  # no description
    await store.put("legacy.b", seal("legacy", 1, 3, {"JOBS": 3}, b"older", at))
    c = await _counting(js, "legacy")
    loaded = await c.load()
    assert loaded is not None and loaded.body == b"newer" and sorted(c.reads) == ["a", "b"]
