"""Teardown writes the ``JOB_LIFECYCLE`` KV records (the only writer): compare-and-set on the revision.

It also bounds the bucket (issue #21): :meth:`LifecycleStore.forget` deletes records of jobs ended
and released long enough ago (each expecting the revision it was seen at, so a record written
in between, or deleted by another teardown instance, is left alone), and
:meth:`LifecycleStore.purge_markers` removes the delete markers once they are old.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from schemas.lifecycle import JobLifecycle, decode_record, encode_record
from services.cloud.records import JobRecords
from services.runtime import natspy

T = TypeVar("T")

log = structlog.get_logger()

DELETE_BATCH = 128
"""Deletes in flight at once when forgetting records."""


class Forgotten(Exception):
    """The job's record was deleted (ended and released ``ended_keep_s`` ago): an event for it is
    a late redelivery, with nothing left to do; recording it would bring a stale record back."""


class LifecycleStore(JobRecords):
    """Read like the provisioner does; write with optimistic concurrency (several teardown instances)."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv)
        self.kv = kv
        self.known: dict[str, tuple[JobLifecycle, int]] = {}
        """Records as this instance last wrote them, with their revision: the next change of the job
        is written against it without reading first (issue #23: one KV round trip per event, not two).
        One that is stale (another instance wrote or deleted it) fails the compare-and-set and is read
        again. Bounded like the bucket: dropped when the record is deleted (:meth:`forget`, :meth:`discard`)."""

    async def mutate(
        self, job_id: str, fn: Callable[[JobLifecycle | None], tuple[JobLifecycle, T]], attempts: int = 50
    ) -> tuple[JobLifecycle, T]:
        """Apply ``fn`` to the current record and store the result unless someone wrote in between
        (then read again and re-apply). ``fn`` is pure, so re-applying is safe. Raises
        :class:`Forgotten` when the record was deleted (its delete marker stands)."""
        rec: JobLifecycle | None
        for attempt in range(attempts):
            known = self.known.get(job_id) if attempt == 0 else None
            if known is not None:
                rec, rev = known
            else:
                rec, rev, deleted = await self.read(job_id)
                if deleted:
                    self.known.pop(job_id, None)
                    raise Forgotten(job_id)
            new, out = fn(rec)
            encoded = encode_record(new)
            if rec is not None and encoded == encode_record(rec):
                if known is not None:
                    continue  # judged on what we wrote last: confirm on the stored record
                return new, out  # nothing changed: no write
            try:
                revision = await self.kv.update(job_id, encoded, last=rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                self.known.pop(job_id, None)
                continue
            self.known[job_id] = (new, revision)
            return new, out
        raise RuntimeError(f"lifecycle record of {job_id} kept changing under us")

    def discard(self, job_id: str) -> None:
        """Forget what we wrote of a record another instance deleted (seen by a watcher)."""
        self.known.pop(job_id, None)

    async def forget(self, records: Sequence[tuple[str, int]]) -> int:
        """Delete each ``(job_id, revision)`` unless it changed since (or is already gone), in
        batches of :data:`DELETE_BATCH`; how many were deleted."""

        async def delete(job_id: str, revision: int) -> bool:
            try:
                await self.kv.delete(job_id, last=revision)
            except nats.js.errors.Error as e:  # wrong last sequence: written or deleted meanwhile
                log.debug("lifecycle record not deleted", job_id=job_id, revision=revision, error=repr(e))
                return False
            return True

        deleted = 0
        for job_id, _ in records:
            self.known.pop(job_id, None)  # deleted or changed meanwhile: read it if it comes up again
        for i in range(0, len(records), DELETE_BATCH):
            batch = records[i : i + DELETE_BATCH]
            deleted += sum(await asyncio.gather(*(delete(job_id, rev) for job_id, rev in batch)))
        return deleted

    async def purge_markers(self, older_than_s: float) -> None:
        """Remove the delete markers older than ``older_than_s`` (and what is left under their keys)."""
        await natspy.purge_kv_deletes(self.kv, older_than_s)


__all__ = ["Forgotten", "LifecycleStore", "decode_record"]
