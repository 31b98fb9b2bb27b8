"""The per-job lifecycle record kept by teardown in the ``JOB_LIFECYCLE`` KV bucket
(declared in :mod:`schemas.subjects`; bound and read by :mod:`services.cloud.records`).

Key: the job id. Written only by teardown (compare-and-set on the key's revision),
read by the provisioner (to skip jobs that ended before their cluster was launched)
and by the orphan reaper. Unknown fields are tolerated, so the record can grow.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas import subjects as s
from schemas.types import Tenant


class JobLifecycle(msgspec.Struct, kw_only=True):
    job_id: str
    cluster: str | None = None
    """``shared`` or ``dedicated``, once known (from ``job.accepted`` or ``placement.decided``)."""
    max_runtime_s: int | None = None
    started_at: datetime | None = None
    """When the job started running: shared at ``placement.decided``, dedicated at ``cluster.provisioned``."""
    deadline: datetime | None = None
    """``started_at + max_runtime_s`` while the job has not ended."""
    end: str | None = None
    """The end state, first trigger wins: cancelled, succeeded, failed or expired."""
    end_reason: str | None = None
    ended_at: datetime | None = None
    released: bool = False
    """True once ``cluster.torn_down`` (dedicated) and ``placement.released`` are stored."""
    instance_ids: list[str] = []
    """Instances the provisioner reported for this job."""
    replicas: dict[str, int] = {}
    """instance id -> the replica it runs, for every instance reported with one (healing, §8.2)."""
    replaced: list[str] = []
    """Instances replaced after they stopped or terminated outside the scheduler
    (``cluster.instance_replaced``): a replica's current instance is its one not listed here."""
    instance_types: list[str] = []
    """A dedicated job's instance types in preference order (its decision's assignments, then
    candidates): the fallback order of a replacement, as at launch."""
    revision: int = 0
    """The highest ``placement.decided`` revision seen (§8.3: a dedicated job's resize is a new revision)."""
    wanted: int | None = None
    """How many replicas that revision wants (null: unknown, records written before resizing):
    a replica numbered at or above it was removed by a shrink and is never healed."""
    provisioned_revision: int = 0
    """The highest revision whose ``cluster.provisioned`` is stored (1: the first launch)."""
    tenant: Tenant = s.DEFAULT_TENANT
    """The job's tenant (§8.4), from ``job.accepted`` (or a placement event): ``placement.released``
    carries it, so the tenant relay copies the release to its account. ``default`` for records
    written before tenants, and for jobs of the scheduler's own account."""


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(JobLifecycle)


def encode_record(rec: JobLifecycle) -> bytes:
    return _enc.encode(rec)


def decode_record(data: bytes) -> JobLifecycle:
    return _dec.decode(data)
