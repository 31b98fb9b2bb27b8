"""``python -m services.metadata`` (env ``DATABASE_URL``; ``METADATA_BATCH`` messages per fetch;
``METADATA_CACHE_JOBS`` job views kept in memory).

The composition root: the database adapter, the node statuses' subscription (coalesced, flushed every
``[metadata] node_flush_s``), the query endpoints (answering 503 until the database is reachable and
migrated), then one batch consumer per projected stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from schemas import subjects as s
from services.metadata.adapters import Database, FleetWriter, is_unavailable
from services.metadata.fleet import Fleet
from services.metadata.paging import Budget
from services.metadata.projector import DECODERS, Projector
from services.metadata.queries import Queries
from services.metadata.retention import Retention
from services.metadata.views import DEFAULT_CACHE_JOBS
from services.runtime.app import Runtime, run, tune_gc
from services.runtime.batch import BatchConsumer

DEFAULT_BATCH = 1000


def batch_size(env: dict[str, str] | None = None) -> int:
    return _int_env(env, "METADATA_BATCH", DEFAULT_BATCH, 1, 10_000)


def cache_jobs(env: dict[str, str] | None = None) -> int:
    return _int_env(env, "METADATA_CACHE_JOBS", DEFAULT_CACHE_JOBS, 0, 10_000_000)


def in_flight(batch: int) -> int:
    """Batches per consumer in flight: about 2,000 messages (small batches make small groups, and each
    group costs a transaction), at least 2 (one written, one prepared), at most 4."""
    return min(4, max(2, 2000 // batch))


def _int_env(env: dict[str, str] | None, name: str, default: int, lo: int, hi: int) -> int:
    raw = (os.environ if env is None else env).get(name, "")
    n = int(raw) if raw.strip() else default
    if not lo <= n <= hi:
        raise SystemExit(f"{name} must be {lo}..{hi}, not {n}")
    return n


async def main(rt: Runtime) -> None:
    if not rt.settings.database_url:
        raise SystemExit("metadata: DATABASE_URL is required (e.g. postgresql://user@host:5432/natsched)")
    db = Database(rt.settings.database_url)
    batch = batch_size()
    async with contextlib.AsyncExitStack() as stack:  # stopped in reverse: endpoints, projector, database
        await db.open()
        stack.push_async_callback(db.close)
        writer = FleetWriter(db)
        stack.push_async_callback(writer.close)
        fleet = Fleet(writer, rt.config.metadata.node_flush_s)
        await fleet.subscribe(rt.nc)  # before the queries answer: a status sent after that is seen
        svc = await stack.enter_async_context(
            rt.micro_service(
                "Projection of every event into PostgreSQL; job and node queries",
                s.METADATA_CONSUMERS,
                batch=str(batch),
            )
        )
        queries = Queries(
            db,
            rt.config.timeouts.node_ttl_s,
            Budget.for_max_payload(rt.nc.max_payload),
            jobs_keep_s=rt.config.retention.jobs_keep_s,
            node_flush_s=rt.config.metadata.node_flush_s,
        )
        await svc.add_endpoints(queries.endpoints(), max_body=64 * 1024)
        if not await db.migrate_until_ready(rt.stop):
            return
        tune_gc()
        projector = Projector(db, cache_jobs(), write_every_s=rt.config.metadata.write_every_s)
        stack.push_async_callback(projector.close)
        consumers = [
            BatchConsumer(
                rt.js,
                spec,
                DECODERS[spec.stream],
                projector.project,
                service="metadata",
                batch=batch,
                transient=is_unavailable,
                in_flight=in_flight(batch),
            )
            for spec in s.METADATA_CONSUMERS
        ]
        retention = Retention(db, rt.config.retention, projector.cache.discard)
        rt.log.info(
            "started",
            batch=batch,
            cache_jobs=projector.cache.capacity,
            node_flush_s=rt.config.metadata.node_flush_s,
            write_every_s=rt.config.metadata.write_every_s,
        )
        await asyncio.gather(*(c.run(rt.stop) for c in consumers), retention.run(rt.stop), fleet.run(rt.stop))


if __name__ == "__main__":
    run("metadata", main)
