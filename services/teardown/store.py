"""Teardown writes the ``JOB_LIFECYCLE`` KV records (the only writer): compare-and-set on the revision."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import nats.js.errors
from nats.js.kv import KeyValue

from schemas.lifecycle import JobLifecycle, decode_record, encode_record
from services.cloud.records import JobRecords

T = TypeVar("T")


class LifecycleStore(JobRecords):
    """Read like the provisioner does; write with optimistic concurrency (several teardown instances)."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv)
        self.kv = kv

    async def mutate(
        self, job_id: str, fn: Callable[[JobLifecycle | None], tuple[JobLifecycle, T]], attempts: int = 50
    ) -> tuple[JobLifecycle, T]:
        """Apply ``fn`` to the current record and store the result unless someone wrote in between
        (then read again and re-apply). ``fn`` is pure, so re-applying is safe."""
        for _ in range(attempts):
            rec, rev = await self.get(job_id)
            new, out = fn(rec)
            if rec is not None and encode_record(new) == encode_record(rec):
                return new, out  # nothing changed: no write
            try:
                await self.kv.update(job_id, encode_record(new), last=rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return new, out
        raise RuntimeError(f"lifecycle record of {job_id} kept changing under us")


__all__ = ["LifecycleStore", "decode_record"]
