"""Reads the ``JOB_LIFECYCLE`` KV bucket that teardown maintains (read-only here)."""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from schemas import subjects as s
from schemas.lifecycle import JobLifecycle, decode_record


async def lifecycle_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Bind the bucket, creating it when this service starts first (same config as teardown)."""
    try:
        return await js.key_value(s.JOB_LIFECYCLE_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(
            bucket=s.JOB_LIFECYCLE_BUCKET,
            description="Per-job lifecycle records kept by teardown",
            history=1,
            storage=js_api.StorageType.FILE,
            replicas=replicas,
        )


class JobRecords:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, job_id: str) -> tuple[JobLifecycle | None, int]:
        """The job's record and its revision (0 when there is none)."""
        try:
            entry = await self._kv.get(job_id)
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        if entry.value is None:
            return None, 0
        return decode_record(entry.value), int(entry.revision or 0)

    async def ended(self, job_id: str) -> bool:
        rec, _ = await self.get(job_id)
        return rec is not None and rec.end is not None
