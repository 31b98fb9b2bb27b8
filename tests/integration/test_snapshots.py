"""Snapshots in the real SNAPSHOTS object store: two slots, the newest valid one wins."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from schemas import subjects as s
from services.runtime.snapshots import Snapshots

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
