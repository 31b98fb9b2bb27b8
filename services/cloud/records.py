"""The ``JOB_LIFECYCLE`` key-value bucket (:data:`schemas.subjects.JOB_LIFECYCLE`): bind it and
read a job's record (:class:`schemas.lifecycle.JobLifecycle`).

Teardown is the only writer (compare-and-set, in ``services/teardown/store.py``); the
provisioner reads it to skip jobs that ended before their cluster was launched, and follows it
to know which dedicated jobs run (healing).

Bounded (issue #21): teardown deletes the record of an ended and released job
``retention.ended_keep_s`` after it ended and purges the delete markers another window later, so
the bucket (and a ``watchall`` replay at start) holds about live jobs plus two windows. While its
marker stands, a deleted record reads as *forgotten* (:meth:`JobRecords.read`): ended, nothing to do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import msgspec
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from schemas import subjects as s
from schemas.lifecycle import JobLifecycle, decode_record

log = structlog.get_logger()


async def lifecycle_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Bind the bucket, creating it when this service starts first (every service declares it alike)."""
    spec = s.JOB_LIFECYCLE
    try:
        return await js.key_value(spec.name)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(
            bucket=spec.name,
            description=spec.description,
            history=spec.history,
            storage=js_api.StorageType.FILE,
            replicas=replicas,
        )


async def record_entries(
    watcher: KeyValue.KeyWatcher,
) -> AsyncIterator[tuple[str, JobLifecycle | None, int] | None]:
    """The bucket's changes from a ``watchall`` watcher: ``(job_id, record, revision)``,
    ``(job_id, None, revision)`` for a deleted or purged record, and None once the replay of the
    stored records is done. An undecodable record is logged and skipped."""
    async for entry in watcher:
        if entry is None:
            yield None
        elif entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            yield entry.key, None, int(entry.revision or 0)
        else:
            try:
                rec = decode_record(entry.value)
            except msgspec.DecodeError:
                log.warning("undecodable lifecycle record", job_id=entry.key)
                continue
            yield entry.key, rec, int(entry.revision or 0)


async def record_changes(watcher: KeyValue.KeyWatcher) -> AsyncIterator[tuple[str, JobLifecycle | None] | None]:
    """:func:`record_entries` without the revisions."""
    async for change in record_entries(watcher):
        yield None if change is None else change[:2]


class JobRecords:
    """Reads the per-job lifecycle records."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def read(self, job_id: str) -> tuple[JobLifecycle | None, int, bool]:
        """The job's record, its revision (0 when there is none) and whether it was deleted
        (forgotten: teardown deletes only records of jobs ended and released long enough ago)."""
        try:
            entry = await self._kv.get(job_id)
        except nats.js.errors.KeyNotFoundError as e:
            deleted = e.op is not None  # nats-py turns a delete marker into KeyNotFoundError(entry, op)
            return None, int(e.entry.revision or 0) if deleted and e.entry is not None else 0, deleted
        if entry.value is None:
            return None, 0, False
        return decode_record(entry.value), int(entry.revision or 0), False

    async def get(self, job_id: str) -> tuple[JobLifecycle | None, int]:
        """The job's record and its revision (0 when there is none)."""
        rec, rev, _ = await self.read(job_id)
        return rec, rev if rec is not None else 0

    async def ended(self, job_id: str) -> bool:
        """Whether teardown recorded an end for the job (a forgotten record: it ended long ago)."""
        rec, _, deleted = await self.read(job_id)
        return deleted or (rec is not None and rec.end is not None)

    async def follow(
        self, keep: Callable[[JobLifecycle], bool], into: dict[str, JobLifecycle], caught_up: asyncio.Event
    ) -> None:
        """Keep ``into`` equal to the records for which ``keep`` holds, following the bucket (all of
        it replayed first; ``caught_up`` is set then) until cancelled."""
        watcher = await self._kv.watchall()
        try:
            async for change in record_changes(watcher):
                if change is None:  # the replay is done
                    caught_up.set()
                    continue
                job_id, rec = change
                if rec is not None and keep(rec):
                    into[job_id] = rec
                else:
                    into.pop(job_id, None)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]


__all__ = ["JobRecords", "lifecycle_bucket", "record_changes", "record_entries"]
