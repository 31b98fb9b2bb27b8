"""The jobs' and events' rows and SQL: recording events, writing job rows under their write
token, listing jobs and a job's events. Batches are bound as one JSON array parameter each."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from schemas.states import TERMINAL_STATES

EVENT_COLUMNS = ("event_key", "type", "job_id", "node_id", "at", "stream", "stream_seq", "body")
EventRecord = tuple[str, str, str | None, str | None, datetime, str, int, str]
"""A row of ``events`` in :data:`EVENT_COLUMNS` order (``body``: the event's JSON exactly as published)."""


class Reservation(msgspec.Struct, frozen=True):
    """A replica placed on a shared node; resources per replica (None: unknown)."""

    replica: int
    node_id: str
    cpu: float | None
    memory_mb: int | None
    gpu: int | None


class JobWrite(msgspec.Struct, frozen=True):
    """A job row to write: insert it (``expected`` None) or update it where its token is ``expected``."""

    job_id: str
    expected: int | None
    version: int
    """The fresh write token this write stores."""
    state: str | None
    reason: str | None
    submitted_at: datetime | None
    updated_at: datetime | None
    released: bool
    reservations: list[Reservation] | None
    """Stored as JSON text (``jobs.reservations``); None while the job is not placed on shared nodes."""
    tenant: str = "default"
    """The job's tenant (§8.4), filtering ``job.list``."""


class StoredJob(msgspec.Struct, frozen=True):
    job_id: str
    version: int


EventPosition = tuple[datetime, int, str]
"""Where an event stands in ``job.events`` order: ``(at, stream_seq, event_key)``."""


class EventPageRow(msgspec.Struct, frozen=True):
    position: EventPosition
    body: str


rows_enc = msgspec.json.Encoder()


def json_rows(rows: Sequence[msgspec.Struct]) -> str:
    """A batch of small rows as one JSON array parameter, unpacked server-side by ``json_to_recordset``:
    much cheaper than asyncpg's per-element array encoding (figures in services/metadata/README.md)."""
    return rows_enc.encode(rows).decode()


STAGE_EVENTS = """
CREATE TEMP TABLE IF NOT EXISTS events_in (event_key text, type text, job_id text, node_id text, at timestamptz,
                                           stream text, stream_seq bigint, body text) ON COMMIT DELETE ROWS
"""
INSERT_STAGED_EVENTS = """
INSERT INTO events (event_key, type, job_id, node_id, at, stream, stream_seq, body)
SELECT event_key, type, job_id, node_id, at, stream, stream_seq, body FROM events_in
ON CONFLICT (event_key) DO NOTHING
"""


def _job_rows(param: str) -> str:
    """The job rows of a write, from a JSON array bound as ``param``, in their given order."""
    return f"""ROWS FROM (json_to_recordset({param}::json) AS (job_id text, expected bigint, version bigint,
    state text, reason text, submitted_at timestamptz, updated_at timestamptz, released boolean, reservations text,
    tenant text))
    WITH ORDINALITY
    AS u(job_id, expected, version, state, reason, submitted_at, updated_at, released, reservations, tenant, n)"""


def insert_jobs(param: str) -> str:
    return f"""
INSERT INTO jobs (job_id, version, state, reason, submitted_at, updated_at, released, reservations, tenant)
SELECT u.job_id, u.version, u.state, u.reason, u.submitted_at, u.updated_at, u.released, u.reservations, u.tenant
FROM {_job_rows(param)}
ORDER BY u.n
ON CONFLICT (job_id) DO NOTHING
RETURNING job_id
"""


def update_jobs(param: str) -> str:
    """Only rows still carrying the version the writer expects (the token check)."""
    return f"""
UPDATE jobs SET version = u.version, state = u.state, reason = u.reason, submitted_at = u.submitted_at,
                updated_at = u.updated_at, released = u.released, reservations = u.reservations, tenant = u.tenant
FROM {_job_rows(param)}
WHERE jobs.job_id = u.job_id AND jobs.version = u.expected
RETURNING jobs.job_id
"""


INSERT_JOBS = insert_jobs("$1")
UPDATE_JOBS = update_jobs("$1")
LOCK_JOBS = "SELECT job_id, version FROM jobs WHERE job_id = ANY($1::text[]) ORDER BY job_id FOR UPDATE"
EVENTS_OF = "SELECT job_id, body FROM events WHERE job_id = ANY($1::text[])"
LIST_ALL = "SELECT seq, job_id FROM jobs WHERE state IS NOT NULL AND seq < $1 ORDER BY seq DESC LIMIT $2"
LIST_STATE = "SELECT seq, job_id FROM jobs WHERE state = $3 AND seq < $1 ORDER BY seq DESC LIMIT $2"
LIST_TENANT = (
    "SELECT seq, job_id FROM jobs WHERE tenant = $3 AND state IS NOT NULL AND seq < $1 ORDER BY seq DESC LIMIT $2"
)
LIST_TENANT_STATE = (
    "SELECT seq, job_id FROM jobs WHERE tenant = $3 AND state = $4 AND seq < $1 ORDER BY seq DESC LIMIT $2"
)
"""One tenant's jobs (index ``jobs_by_tenant (tenant, seq)``, walked backwards from the cursor)."""
JOB_TENANT = "SELECT tenant FROM jobs WHERE job_id = $1"
JOB_EVENTS = "SELECT body FROM events WHERE job_id = $1 ORDER BY at, stream_seq, event_key"
JOB_EVENTS_PAGE = """
SELECT at, stream_seq, event_key, body FROM events
WHERE job_id = $1 AND (at, stream_seq, event_key) > ($2, $3, $4)
ORDER BY at, stream_seq, event_key LIMIT $5
"""
MAX_SEQ = 2**63 - 1
MIN_TIME = datetime(1, 1, 1, tzinfo=UTC)


# --- retention (issue #21) ----------------------------------------------------
ENDED = "(state IS NULL OR state IN ({}))".format(", ".join(f"'{st}'" for st in sorted(TERMINAL_STATES)))
"""Jobs retention may forget once their last event is old enough: ended (a terminal state) or orphans
(no state: events of a job forgotten before they arrived). Literally the predicate of the partial index
``jobs_ended`` (migration 0008), so the planner uses it."""

DELETE_ENDED_JOBS = f"""
WITH gone AS (
    DELETE FROM jobs WHERE job_id IN (
        SELECT job_id FROM jobs WHERE {ENDED} AND updated_at < $1 ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED
    )
    RETURNING job_id
), ev AS (
    DELETE FROM events e USING gone WHERE e.job_id = gone.job_id RETURNING 1
)
SELECT job_id, (SELECT count(*) FROM ev) FROM gone
"""
"""One batch (``$2`` jobs at most) of jobs ended before ``$1``, with their events (history, placements,
instances and reservations all live in those two tables); rows: (job_id, events deleted in all)."""

DELETE_NODE_FACTS = """
DELETE FROM events WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM events WHERE job_id IS NULL AND at < $1 ORDER BY at LIMIT $2
))
"""
"""One batch of node facts (drain facts; statuses recorded before migration 0008) older than ``$1``."""
