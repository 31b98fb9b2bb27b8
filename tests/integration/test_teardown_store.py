"""Teardown's record store writes against what it wrote last (issue #23: one KV round trip per
event instead of a read and a write), and stays correct when that is stale: another writer's
change is read and built on, a deleted record is still forgotten."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest
from nats.aio.client import Client

from schemas.lifecycle import JobLifecycle, encode_record
from services.cloud.records import lifecycle_bucket
from services.teardown.store import Forgotten, LifecycleStore

pytestmark = pytest.mark.integration


class Counting(LifecycleStore):
    reads = 0

    async def read(self, job_id: str) -> tuple[JobLifecycle | None, int, bool]:
        self.reads += 1
        return await super().read(job_id)


def add_instance(iid: str) -> Callable[[JobLifecycle | None], tuple[JobLifecycle, None]]:
    def fn(rec: JobLifecycle | None) -> tuple[JobLifecycle, None]:
        rec = rec or JobLifecycle(job_id="j1")
        return msgspec.structs.replace(rec, instance_ids=[*rec.instance_ids, iid]), None

    return fn


async def test_a_job_read_once_is_then_written_without_reading(nc: Client) -> None:
    store = Counting(await lifecycle_bucket(nc.jetstream()))
    for iid in ("i-1", "i-2", "i-3"):
        await store.mutate("j1", add_instance(iid))
    assert store.reads == 1  # the first event only (no record yet)
    rec, _ = await store.get("j1")
    assert rec is not None and rec.instance_ids == ["i-1", "i-2", "i-3"]


async def test_a_change_by_another_writer_is_read_and_built_on(nc: Client) -> None:
    kv = await lifecycle_bucket(nc.jetstream())
    store = Counting(kv)
    await store.mutate("j1", add_instance("i-1"))
    await kv.put("j1", encode_record(JobLifecycle(job_id="j1", instance_ids=["i-1", "other"])))  # another instance
    await store.mutate("j1", add_instance("i-2"))
    rec, _ = await store.get("j1")
    assert rec is not None and rec.instance_ids == ["i-1", "other", "i-2"]


async def test_no_change_is_confirmed_on_the_stored_record(nc: Client) -> None:
    """``fn`` finding nothing to change in what we wrote last is not trusted: the stored record decides."""
    kv = await lifecycle_bucket(nc.jetstream())
    store = Counting(kv)
    await store.mutate("j1", add_instance("i-1"))
    await kv.put("j1", encode_record(JobLifecycle(job_id="j1")))  # another instance took i-1 out

    def ensure_i1(rec: JobLifecycle | None) -> tuple[JobLifecycle, bool]:
        assert rec is not None
        return (rec, False) if "i-1" in rec.instance_ids else (add_instance("i-1")(rec)[0], True)

    _, wrote = await store.mutate("j1", ensure_i1)
    assert wrote and store.reads == 2


async def test_a_record_deleted_behind_the_store_is_forgotten_not_brought_back(nc: Client) -> None:
    kv = await lifecycle_bucket(nc.jetstream())
    store = LifecycleStore(kv)
    await store.mutate("j1", add_instance("i-1"))
    await kv.delete("j1")  # another teardown instance forgot it
    with pytest.raises(Forgotten):
        await store.mutate("j1", add_instance("late"))
    assert "j1" not in store.known
    rec, _ = await store.get("j1")
    assert rec is None


async def test_forgetting_records_drops_them_from_memory(nc: Client) -> None:
    store = LifecycleStore(await lifecycle_bucket(nc.jetstream()))
    await store.mutate("j1", add_instance("i-1"))
    (_, rev) = store.known["j1"]
    assert await store.forget([("j1", rev)]) == 1
    assert store.known == {}
