"""Schema migrations: numbered SQL files applied in order, once, recorded in a table.

``migrations/NNNN_name.sql`` are applied in ascending ``NNNN``, each in its own
transaction together with its row in ``schema_migrations``. A session-level advisory
lock serialises instances starting at once: the second waits, then finds nothing to do.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import msgspec
import structlog

log = structlog.get_logger()

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
LOCK_KEY = 0x6E6174736D657461  # "natsmeta": the advisory lock of schema changes
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in order; raises ValueError on a misnamed or duplicate version."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if m is None:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version:04d}")
        found[version] = Migration(version, m.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is missing; returns the versions applied now. Safe to run concurrently."""
    todo = load() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied: list[int] = []
        for mig in todo:
            if mig.version in done:
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", mig.version, mig.name
                )
            log.info("migration applied", version=mig.version, name=mig.name)
            applied.append(mig.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
