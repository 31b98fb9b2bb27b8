"""The PostgreSQL edge (asyncpg): a thin adapter, SQL only, no projection logic.

:class:`Database` owns the pool and answers queries; :meth:`Database.transaction`
yields a :class:`Tx` whose methods are the few statements of a projection batch, each one
round trip for the whole batch (COPY for the events, a JSON array parameter for the rest).
:func:`is_unavailable` tells an outage (retry later, answer 503) from a bug. The SQL and row
types: :mod:`~services.metadata.sql_jobs` (jobs, events), :mod:`~services.metadata.sql_nodes` (nodes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
import structlog

from services.metadata import migrations
from services.metadata import sql_jobs as jobs
from services.metadata import sql_nodes as nodes
from services.metadata.sql_jobs import EVENT_COLUMNS, EventPageRow, EventPosition, EventRecord, JobWrite, StoredJob
from services.metadata.sql_nodes import DrainRow, NodeListRow, NodeRow, NodeSummaryRow
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


_WRITE_GROUP = f"""
WITH ins AS ({jobs.insert_jobs("$1")}), upd AS ({jobs.update_jobs("$2")}),
     drain AS ({nodes.UPSERT_DRAINS.format(param="$3")})
SELECT job_id FROM ins UNION ALL SELECT job_id FROM upd
"""
"""One round trip per group: new job rows, cached job rows under their token, and drains (node statuses
are not projected: :class:`FleetWriter` writes them)."""


RETENTION_LOCK = 0x6E61747372657465  # "natsrete": one metadata instance sweeps at a time
FLEET_LOCK = 0x6E617473666C6565  # "natsflee": one metadata instance writes node statuses (FleetWriter)


class Swept(msgspec.Struct, kw_only=True):
    """What one retention round deleted."""

    jobs: int = 0
    job_events: int = 0
    history: int = 0
    node_facts: int = 0


async def _delete_all(conn: asyncpg.Connection, sql: str, before: datetime, batch: int) -> int:
    """Run a batched ``DELETE`` (``$1`` cut-off, ``$2`` batch) until a batch deletes less than ``batch``."""
    total = 0
    while True:
        status = await conn.execute(sql, before, batch)
        n = int(status.split()[-1])
        total += n
        if n < batch:
            return total


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
        await self._conn.execute(jobs.STAGE_EVENTS)
        await self._conn.copy_records_to_table("events_in", records=records, columns=EVENT_COLUMNS)
        await self._conn.execute(jobs.INSERT_STAGED_EVENTS)

    async def write_group(
        self, inserts: Sequence[JobWrite], updates: Sequence[JobWrite], drains: Sequence[DrainRow] = ()
    ) -> set[str]:
        """One round trip: insert new job rows (in the given order: the listing order), update cached ones
        where their token is still ``expected``, keep each node's newest drain fact. The job ids written."""
        by_node = sorted(drains, key=lambda r: r.node_id)
        recs = await self._conn.fetch(
            _WRITE_GROUP, jobs.json_rows(inserts), jobs.json_rows(updates), jobs.json_rows(by_node)
        )
        return {r[0] for r in recs}

    async def insert_jobs(self, rows: Sequence[JobWrite]) -> set[str]:
        """Insert new job rows (in the given order: it is the listing order); the ids inserted."""
        return {r[0] for r in await self._conn.fetch(jobs.INSERT_JOBS, jobs.json_rows(rows))}

    async def update_jobs(self, rows: Sequence[JobWrite]) -> set[str]:
        """Update each row whose token is still its ``expected``; the ids updated."""
        return {r[0] for r in await self._conn.fetch(jobs.UPDATE_JOBS, jobs.json_rows(rows))}

    async def lock_jobs(self, job_ids: Sequence[str]) -> list[StoredJob]:
        """Lock existing rows (in key order: no deadlocks between reloads); their tokens."""
        return [StoredJob(r[0], r[1]) for r in await self._conn.fetch(jobs.LOCK_JOBS, sorted(job_ids))]

    async def events_of(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(job_id, body) of every recorded event of these jobs (this transaction's included)."""
        return [(r[0], r[1]) for r in await self._conn.fetch(jobs.EVENTS_OF, list(job_ids))]


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

    async def connect(self) -> asyncpg.Connection:
        """A connection of its own, outside the pool (for a session lock; the caller closes it)."""
        conn: asyncpg.Connection = await asyncpg.connect(self._dsn, command_timeout=self._command_timeout)
        return conn

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

    # --- retention (issue #21): one instance at a time, batches of their own transaction each ---
    async def sweep(
        self, jobs_before: datetime, nodes_before: datetime, batch: int, forget: Callable[[list[str]], None]
    ) -> Swept | None:
        """Delete, in batches of ``batch`` rows per statement, jobs ended before ``jobs_before`` (with their
        events), node history and node facts older than ``nodes_before``; ``forget`` is told each batch of
        job ids deleted. None if another instance holds the retention lock (it is sweeping)."""
        if not self.ready:
            raise Unavailable("schema not migrated yet")
        async with self._conn() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK):
                return None
            try:
                swept = Swept()
                while True:
                    rows = await conn.fetch(jobs.DELETE_ENDED_JOBS, jobs_before, batch)
                    if rows:
                        forget([r[0] for r in rows])
                        swept.jobs += len(rows)
                        swept.job_events += int(rows[0][1])
                    if len(rows) < batch:
                        break
                swept.history = await _delete_all(conn, nodes.DELETE_HISTORY, nodes_before, batch)
                swept.node_facts = await _delete_all(conn, jobs.DELETE_NODE_FACTS, nodes_before, batch)
                return swept
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)

    # --- queries (each bounded by query_timeout, so a hung database answers 503 in time) ---
    async def _query(self, sql: str, *args: Any) -> list[Any]:
        if not self.ready:
            raise Unavailable("schema not migrated yet")
        async with self._conn(self._query_timeout) as conn:
            rows: list[Any] = await conn.fetch(sql, *args, timeout=self._query_timeout)
            return rows

    async def list_jobs(
        self, state: str | None, before_seq: int | None, limit: int, tenant: str | None = None
    ) -> list[tuple[int, str]]:
        """(seq, job_id) of jobs newest first (by ``seq``), strictly before ``before_seq`` when given,
        of ``state`` and of ``tenant`` when given."""
        before = jobs.MAX_SEQ if before_seq is None else before_seq
        if tenant is not None:
            if state is None:
                rows = await self._query(jobs.LIST_TENANT, before, limit, tenant)
            else:
                rows = await self._query(jobs.LIST_TENANT_STATE, before, limit, tenant, state)
        elif state is None:
            rows = await self._query(jobs.LIST_ALL, before, limit)
        else:
            rows = await self._query(jobs.LIST_STATE, before, limit, state)
        return [(r[0], r[1]) for r in rows]

    async def job_tenant(self, job_id: str) -> str | None:
        """The tenant of a projected job, None if the job has no row."""
        rows = await self._query(jobs.JOB_TENANT, job_id)
        return str(rows[0][0]) if rows else None

    async def job_events(self, job_id: str) -> list[str]:
        """The bodies of a job's events, oldest first."""
        return [r[0] for r in await self._query(jobs.JOB_EVENTS, job_id)]

    async def events_of(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        """(job_id, body) of every event of these jobs, in no particular order."""
        return [(r[0], r[1]) for r in await self._query(jobs.EVENTS_OF, list(job_ids))]

    async def job_events_page(self, job_id: str, after: EventPosition | None, limit: int) -> list[EventPageRow]:
        """Up to ``limit`` of a job's events, oldest first, strictly after ``after`` when given."""
        at, seq, key = after if after is not None else (jobs.MIN_TIME, -1, "")
        rows = await self._query(jobs.JOB_EVENTS_PAGE, job_id, at, seq, key, limit)
        return [EventPageRow(position=(r[0], r[1], r[2]), body=r[3]) for r in rows]

    async def node_page(
        self, after: str, state: str | None, labels: dict[str, str] | None, stale_before: datetime, limit: int
    ) -> list[NodeListRow]:
        """Up to ``limit`` nodes in ``node_id`` order after ``after``, filtered by listed state and labels."""
        rows = await self._query(nodes.NODE_PAGE, stale_before, state, nodes.label_param(labels), after, limit)
        return [
            NodeListRow(node_id=r[0], status=r[1], cpu=r[2], memory_mb=r[3], gpu=r[4], replicas=r[5], draining=r[6])
            for r in rows
        ]

    async def node_summary(
        self, state: str | None, labels: dict[str, str] | None, stale_before: datetime
    ) -> list[NodeSummaryRow]:
        """One row per listed state of the matching nodes: counts, capacity, free and reserved, summed."""
        rows = await self._query(nodes.NODE_SUMMARY, stale_before, state, nodes.label_param(labels))
        return [NodeSummaryRow(*r) for r in rows]


class FleetWriter:
    """Writes the fleet's coalesced statuses (:mod:`services.metadata.fleet`) on a connection of its own
    that holds :data:`FLEET_LOCK` (a session advisory lock) while this
    instance is the writer: every metadata instance receives every status, exactly one writes them
    (the others find the lock held and drop theirs). The lock goes with the connection: an instance
    that dies or loses PostgreSQL hands it over, and another takes it at its next flush."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: asyncpg.Connection | None = None
        self.writer = False
        """Whether this instance holds the lock (as of its last flush)."""

    async def write(self, statuses: Sequence[NodeRow], history: Sequence[NodeRow]) -> set[str] | None:
        """In one statement: each node's newest status (``statuses``) and, of ``history``, the rows the
        SQL guard lets in; the node ids given a history row. None when another instance is the writer.
        An outage closes the connection (and so gives the lock up) and raises; a refused statement
        raises and keeps both."""
        if not self._db.ready:
            raise Unavailable("schema not migrated yet")
        try:
            conn = self._conn
            if conn is None or conn.is_closed():
                conn = self._conn = await self._db.connect()
                self.writer = False
            if not self.writer:
                self.writer = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", FLEET_LOCK))
                if not self.writer:
                    return None
                log.info("fleet: this instance writes node statuses")
            rows = sorted(statuses, key=lambda r: r.node_id), sorted(history, key=lambda r: r.node_id)
            recs = await conn.fetch(nodes.FLUSH_NODES, *(jobs.json_rows(r) for r in rows))
            return {r[0] for r in recs}
        except asyncpg.PostgresError as e:  # a refused statement leaves the connection (and lock) usable
            if is_unavailable(e):
                await self.close()
            raise
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection (releasing the lock, if held)."""
        conn, self._conn, self.writer = self._conn, None, False
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:
                conn.terminate()


__all__ = [
    "Database",
    "EventPageRow",
    "EventPosition",
    "EventRecord",
    "FleetWriter",
    "JobWrite",
    "NodeListRow",
    "NodeRow",
    "NodeSummaryRow",
    "StoredJob",
    "Swept",
    "Tx",
    "Unavailable",
    "is_unavailable",
]
