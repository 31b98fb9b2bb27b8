"""``python -m services.metadata`` (env ``DATABASE_URL``; ``METADATA_BATCH`` messages per transaction).

The composition root: the database adapter, the query endpoints (answering 503 until
the database is reachable and migrated), then one batch consumer per projected stream.
"""

from __future__ import annotations

import asyncio
import os

from schemas import subjects as s
from services.metadata.adapters import Database, is_unavailable
from services.metadata.handlers import DECODERS, Projector, Queries
from services.runtime.app import VERSION, Runtime, run
from services.runtime.consumer import BatchConsumer
from services.runtime.micro import MicroService

DEFAULT_BATCH = 1000


def batch_size(env: dict[str, str] | None = None) -> int:
    raw = (os.environ if env is None else env).get("METADATA_BATCH", "")
    n = int(raw) if raw.strip() else DEFAULT_BATCH
    if not 1 <= n <= 10_000:
        raise SystemExit(f"METADATA_BATCH must be 1..10000, not {n}")
    return n


async def main(rt: Runtime) -> None:
    if not rt.settings.database_url:
        raise SystemExit("metadata: DATABASE_URL is required (e.g. postgresql://user@host:5432/natsched)")
    db = Database(rt.settings.database_url)
    await db.open()
    batch = batch_size()
    svc = MicroService(
        rt.nc,
        name="metadata",
        version=VERSION,
        description="Projection of every event into PostgreSQL; job and node queries",
        metadata=rt.metadata(
            consumers=",".join(f"{c.stream}/{c.durable}" for c in s.METADATA_CONSUMERS), batch=str(batch)
        ),
    )
    await svc.start()
    for name, subject, handler, meta in Queries(db, rt.config.timeouts.node_ttl_s).endpoints():
        await svc.add_endpoint(name, subject, handler, max_body=64 * 1024, metadata=meta)
    try:
        if await db.migrate_until_ready(rt.stop):
            projector = Projector(db)
            consumers = [
                BatchConsumer(
                    rt.js,
                    spec,
                    DECODERS[spec.stream],
                    projector.project,
                    service="metadata",
                    batch=batch,
                    transient=is_unavailable,
                )
                for spec in s.METADATA_CONSUMERS
            ]
            rt.log.info("started", batch=batch)
            await asyncio.gather(*(c.run(rt.stop) for c in consumers))
    finally:
        await svc.stop()
        await db.close()


if __name__ == "__main__":
    run("metadata", main)
