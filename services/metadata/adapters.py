"""The PostgreSQL edge (asyncpg): a thin adapter, SQL only, no projection logic.

:class:`Database` owns the pool and answers queries; :meth:`Database.transaction`
yields a :class:`Tx` whose methods are the few statements of a projection batch, each one
round trip for the whole batch (COPY for the events, ``unnest`` of arrays for the rest).
:func:`is_unavailable` tells an outage (retry later, answer 503) from a bug.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import structlog

from services.metadata import migrations
from services.runtime import backoff

log = structlog.get_logger()


class Unavailable(Exception):
    """PostgreSQL cannot be used right now (down, restarting, or the schema is not migrated yet)."""


_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    Unavailable,
    OSError,  # refused, reset, unreachable
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,  # incl. ConnectionDoesNotExistError
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization: retry the batch
)


def is_unavailable(e: BaseException) -> bool:
    """Whether ``e`` is an outage of the database (worth waiting out) rather than a bug."""
    if isinstance(e, _OUTAGE_ERRORS):
        return True
    return isinstance(e, asyncpg.exceptions.InterfaceError) and "closed" in str(e)


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


class StoredJob(msgspec.Struct, frozen=True):
    job_id: str
    version: int


class NodeRow(msgspec.Struct, frozen=True):
    node_id: str
    state: str
    at: datetime
    status: msgspec.Raw


class NodeListRow(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    status: str
    cpu: float
    memory_mb: int
    gpu: int
    replicas: int


class NodeSummaryRow(msgspec.Struct, frozen=True, array_like=True):
    """The matching nodes of one listed state, summed (free: per node as placement counts it)."""

    listed: str
    nodes: int
    cpu: float
    memory_mb: int
    gpu: int
    free_cpu: float
    free_memory_mb: int
    free_gpu: int
    reserved_cpu: float
    reserved_memory_mb: int
    reserved_gpu: int
    replicas: int


EventPosition = tuple[datetime, int, str]
"""Where an event stands in ``job.events`` order: ``(at, stream_seq, event_key)``."""


class EventPageRow(msgspec.Struct, frozen=True):
    position: EventPosition
    body: str


_rows_enc = msgspec.json.Encoder()


def _json_rows(rows: Sequence[msgspec.Struct]) -> str:
    """A batch of small rows as one JSON array parameter, unpacked server-side by ``json_to_recordset``:
    much cheaper than asyncpg's per-element array encoding (figures in services/metadata/README.md)."""
    return _rows_enc.encode(rows).decode()


_STAGE_EVENTS = """
CREATE TEMP TABLE IF NOT EXISTS events_in (event_key text, type text, job_id text, node_id text, at timestamptz,
                                           stream text, stream_seq bigint, body text) ON COMMIT DELETE ROWS
"""
_INSERT_STAGED_EVENTS = """
INSERT INTO events (event_key, type, job_id, node_id, at, stream, stream_seq, body)
SELECT event_key, type, job_id, node_id, at, stream, stream_seq, body FROM events_in
ON CONFLICT (event_key) DO NOTHING
"""


def _job_rows(param: str) -> str:
    """The job rows of a write, from a JSON array bound as ``param``, in their given order."""
    return f"""ROWS FROM (json_to_recordset({param}::json) AS (job_id text, expected bigint, version bigint,
    state text, reason text, submitted_at timestamptz, updated_at timestamptz, released boolean, reservations text))
    WITH ORDINALITY
    AS u(job_id, expected, version, state, reason, submitted_at, updated_at, released, reservations, n)"""


def _insert_jobs(param: str) -> str:
    return f"""
INSERT INTO jobs (job_id, version, state, reason, submitted_at, updated_at, released, reservations)
SELECT u.job_id, u.version, u.state, u.reason, u.submitted_at, u.updated_at, u.released, u.reservations
FROM {_job_rows(param)}
ORDER BY u.n
ON CONFLICT (job_id) DO NOTHING
RETURNING job_id
"""


def _update_jobs(param: str) -> str:
    """Only rows still carrying the version the writer expects (the token check)."""
    return f"""
UPDATE jobs SET version = u.version, state = u.state, reason = u.reason, submitted_at = u.submitted_at,
                updated_at = u.updated_at, released = u.released, reservations = u.reservations
FROM {_job_rows(param)}
WHERE jobs.job_id = u.job_id AND jobs.version = u.expected
RETURNING jobs.job_id
"""


_INSERT_JOBS = _insert_jobs("$1")
_UPDATE_JOBS = _update_jobs("$1")
_WRITE_GROUP = f"""
WITH ins AS ({_insert_jobs("$1")}), upd AS ({_update_jobs("$2")}), node AS (
    INSERT INTO nodes (node_id, state, at, status)
    SELECT * FROM json_to_recordset($3::json) AS r(node_id text, state text, at timestamptz, status text)
    ON CONFLICT (node_id) DO UPDATE SET state = EXCLUDED.state, at = EXCLUDED.at, status = EXCLUDED.status
    WHERE nodes.at < EXCLUDED.at
)
SELECT job_id FROM ins UNION ALL SELECT job_id FROM upd
"""
_LOCK_JOBS = "SELECT job_id, version FROM jobs WHERE job_id = ANY($1::text[]) ORDER BY job_id FOR UPDATE"
_EVENTS_OF = "SELECT job_id, body FROM events WHERE job_id = ANY($1::text[])"
_LIST_ALL = "SELECT seq, job_id FROM jobs WHERE state IS NOT NULL AND seq < $1 ORDER BY seq DESC LIMIT $2"
_LIST_STATE = "SELECT seq, job_id FROM jobs WHERE state = $3 AND seq < $1 ORDER BY seq DESC LIMIT $2"
_JOB_EVENTS = "SELECT body FROM events WHERE job_id = $1 ORDER BY at, stream_seq, event_key"
_JOB_EVENTS_PAGE = """
SELECT at, stream_seq, event_key, body FROM events
WHERE job_id = $1 AND (at, stream_seq, event_key) > ($2, $3, $4)
ORDER BY at, stream_seq, event_key LIMIT $5
"""
_LISTED_STATE = "CASE WHEN n.state = 'active' AND n.at < $1 THEN 'inactive' ELSE n.state END"
"""A node's listed state: ``inactive`` when it says active but its last status is older than ``$1``."""
_NODE_FILTER = f"($2::text IS NULL OR {_LISTED_STATE} = $2) AND ($3::jsonb IS NULL OR n.labels @> $3::jsonb)"


def _reserved(where: str) -> str:
    """Reservations of unreleased jobs summed per node, for the nodes ``where`` selects."""
    return f"""
    SELECT r.node_id, sum(r.cpu) AS cpu, sum(r.memory_mb) AS memory_mb, sum(r.gpu) AS gpu, count(*) AS replicas
    FROM jobs j CROSS JOIN LATERAL json_to_recordset(j.reservations::json)
                                   AS r(node_id text, cpu float8, memory_mb bigint, gpu integer)
    WHERE NOT j.released AND j.reservations IS NOT NULL AND {where}
    GROUP BY r.node_id"""


_NODE_PAGE = f"""
WITH page AS (
    SELECT n.node_id, n.status FROM nodes n
    WHERE n.node_id > $4 AND {_NODE_FILTER}
    ORDER BY n.node_id LIMIT $5
)
SELECT p.node_id, p.status, COALESCE(r.cpu, 0)::float8 AS cpu, COALESCE(r.memory_mb, 0)::bigint AS memory_mb,
       COALESCE(r.gpu, 0)::bigint AS gpu, COALESCE(r.replicas, 0)::bigint AS replicas
FROM page p
LEFT JOIN ({_reserved("r.node_id IN (SELECT node_id FROM page)")}) r USING (node_id)
ORDER BY p.node_id
"""
_NODE_SUMMARY = f"""
WITH n AS (
    SELECT n.node_id, {_LISTED_STATE} AS listed, n.cpu_cores, n.cpu_free, n.memory_mb, n.memory_free_mb, n.gpus
    FROM nodes n WHERE {_NODE_FILTER}
)
SELECT n.listed, count(*) AS nodes,
       COALESCE(sum(n.cpu_cores), 0)::float8, COALESCE(sum(n.memory_mb), 0)::bigint, COALESCE(sum(n.gpus), 0)::bigint,
       COALESCE(sum(GREATEST(0, LEAST(n.cpu_cores - COALESCE(r.cpu, 0), n.cpu_free))), 0)::float8,
       COALESCE(sum(GREATEST(0, LEAST(n.memory_mb - COALESCE(r.memory_mb, 0), n.memory_free_mb))), 0)::bigint,
       COALESCE(sum(GREATEST(0, n.gpus - COALESCE(r.gpu, 0))), 0)::bigint,
       COALESCE(sum(r.cpu), 0)::float8, COALESCE(sum(r.memory_mb), 0)::bigint, COALESCE(sum(r.gpu), 0)::bigint,
       COALESCE(sum(r.replicas), 0)::bigint
FROM n LEFT JOIN ({_reserved("TRUE")}) r USING (node_id)
GROUP BY n.listed
"""
_MAX_SEQ = 2**63 - 1
_MIN_TIME = datetime(1, 1, 1, tzinfo=UTC)


class Tx:
    """The statements of one projection batch, inside one transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def insert_events(self, records: Sequence[EventRecord], *, seen_before: bool = False) -> None:
        """Record events (keys unique within ``records``).

        COPY straight into ``events``: a key recorded before (a redelivery) fails it with
        ``UniqueViolationError``, which aborts the transaction. Run it again ``seen_before``: the rows then
        go through a staging table and ``INSERT ... ON CONFLICT DO NOTHING``.
        """
        if not seen_before:
            await self._conn.copy_records_to_table("events", records=records, columns=EVENT_COLUMNS)
            return
        await self._conn.execute(_STAGE_EVENTS)
        await self._conn.copy_records_to_table("events_in", records=records, columns=EVENT_COLUMNS)
        await self._conn.execute(_INSERT_STAGED_EVENTS)

    async def write_group(
        self, inserts: Sequence[JobWrite], updates: Sequence[JobWrite], nodes: Sequence[NodeRow]
    ) -> set[str]:
        """One round trip: insert new job rows (in the given order: the listing order), update cached ones
        where their token is still ``expected``, keep each node's newest status. The job ids written."""
        ordered: list[NodeRow] = sorted(nodes, key=lambda r: r.node_id)
        recs = await self._conn.fetch(_WRITE_GROUP, _json_rows(inserts), _json_rows(updates), _json_rows(ordered))
        return {r[0] for r in recs}

    async def insert_jobs(self, rows: Sequence[JobWrite]) -> set[str]:
        """Insert new job rows (in the given order: it is the listing order); the ids inserted."""
        return {r[0] for r in await self._conn.fetch(_INSERT_JOBS, _json_rows(rows))}

    async def update_jobs(self, rows: Sequence[JobWrite]) -> set[str]:
        """Update each row whose token is still its ``expected``; the ids updated."""
        return {r[0] for r in await self._conn.fetch(_UPDATE_JOBS, _json_rows(rows))}

    async def lock_jobs(self, job_ids: Sequence[str]) -> list[StoredJob]:
        """Lock existing rows (in key order: no deadlocks between reloads); their tokens."""
        return [StoredJob(r[0], r[1]) for r in await self._conn.fetch(_LOCK_JOBS, sorted(job_ids))]

    async def events_of(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(job_id, body) of every recorded event of these jobs (this transaction's included)."""
        return [(r[0], r[1]) for r in await self._conn.fetch(_EVENTS_OF, list(job_ids))]


class Database:
    """The asyncpg pool, created lazily (``min_size=0``), so a database that is down at start
    or later only makes calls fail with an outage error (see :func:`is_unavailable`)."""

    def __init__(
        self, dsn: str, *, max_size: int = 8, command_timeout: float = 30.0, query_timeout: float = 5.0
    ) -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._query_timeout = query_timeout
        self._pool: Any = None
        self.ready = False
        """Set once migrations are applied; queries answer Unavailable before."""

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._max_size,
            command_timeout=self._command_timeout,
            max_inactive_connection_lifetime=60.0,
        )

    async def close(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 10)
            except Exception:
                self._pool.terminate()
            self._pool = None

    @asynccontextmanager
    async def _conn(self, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise Unavailable("database pool is not open")
        async with self._pool.acquire(timeout=timeout or self._command_timeout) as conn:
            yield conn

    async def migrate(self) -> list[int]:
        """Apply pending migrations (advisory lock: safe with concurrent instances)."""
        async with self._conn() as conn:
            applied = await migrations.migrate(conn)
        self.ready = True
        return applied

    async def migrate_until_ready(self, stop: asyncio.Event, cap_s: float = 5.0) -> bool:
        """Retry :meth:`migrate` through an outage (backoff 0.2 s doubling to ``cap_s``); False if
        ``stop`` was set first."""
        attempt = 0
        while not stop.is_set():
            try:
                await self.migrate()
                return True
            except Exception as e:
                if not is_unavailable(e):
                    raise
                attempt += 1
                wait = backoff.delay(attempt, base=0.2, cap=cap_s)
                log.warning("database unavailable; migrations wait", error=repr(e), retry_in_s=wait)
                await backoff.sleep_unless(stop, wait)
        return False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        if not self.ready:
            raise Unavailable("schema not migrated yet")
        async with self._conn() as conn, conn.transaction():
            yield Tx(conn)

    # --- queries (each bounded by query_timeout, so a hung database answers 503 in time) ---
    async def _query(self, sql: str, *args: Any) -> list[Any]:
        if not self.ready:
            raise Unavailable("schema not migrated yet")
        async with self._conn(self._query_timeout) as conn:
            rows: list[Any] = await conn.fetch(sql, *args, timeout=self._query_timeout)
            return rows

    async def list_jobs(self, state: str | None, before_seq: int | None, limit: int) -> list[tuple[int, str]]:
        """(seq, job_id) of jobs newest first (by ``seq``), strictly before ``before_seq`` when given."""
        before = _MAX_SEQ if before_seq is None else before_seq
        if state is None:
            rows = await self._query(_LIST_ALL, before, limit)
        else:
            rows = await self._query(_LIST_STATE, before, limit, state)
        return [(r[0], r[1]) for r in rows]

    async def job_events(self, job_id: str) -> list[str]:
        """The bodies of a job's events, oldest first."""
        return [r[0] for r in await self._query(_JOB_EVENTS, job_id)]

    async def events_of(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(job_id, body) of every event of these jobs, in no particular order."""
        return [(r[0], r[1]) for r in await self._query(_EVENTS_OF, list(job_ids))]

    async def job_events_page(self, job_id: str, after: EventPosition | None, limit: int) -> list[EventPageRow]:
        """Up to ``limit`` of a job's events, oldest first, strictly after ``after`` when given."""
        at, seq, key = after if after is not None else (_MIN_TIME, -1, "")
        rows = await self._query(_JOB_EVENTS_PAGE, job_id, at, seq, key, limit)
        return [EventPageRow(position=(r[0], r[1], r[2]), body=r[3]) for r in rows]

    async def node_page(
        self, after: str, state: str | None, labels: dict[str, str] | None, stale_before: datetime, limit: int
    ) -> list[NodeListRow]:
        """Up to ``limit`` nodes in ``node_id`` order after ``after``, filtered by listed state and labels."""
        rows = await self._query(_NODE_PAGE, stale_before, state, _label_param(labels), after, limit)
        return [NodeListRow(node_id=r[0], status=r[1], cpu=r[2], memory_mb=r[3], gpu=r[4], replicas=r[5]) for r in rows]

    async def node_summary(
        self, state: str | None, labels: dict[str, str] | None, stale_before: datetime
    ) -> list[NodeSummaryRow]:
        """One row per listed state of the matching nodes: counts, capacity, free and reserved, summed."""
        rows = await self._query(_NODE_SUMMARY, stale_before, state, _label_param(labels))
        return [NodeSummaryRow(*r) for r in rows]


def _label_param(labels: dict[str, str] | None) -> str | None:
    return _rows_enc.encode(labels).decode() if labels else None
