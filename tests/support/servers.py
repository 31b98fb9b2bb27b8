"""The repo's servers as tests and benchmarks use them: nats.conf credentials, services up, a fresh database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import nats
from nats.aio.client import Client

from schemas.subjects import ROLE_INBOX_PREFIXES
from services.devstack import ServiceProcess
from services.runtime.credentials import Role, password

REPO = Path(__file__).resolve().parents[2]

Spawn = Callable[..., Awaitable[list[ServiceProcess]]]
"""The ``services`` fixture: ``await services("gateway", "intake", env={...}, wait=True)``."""


def nats_auth(role: Role = "admin") -> dict[str, str]:
    """``nats.connect(url, **nats_auth("manager"))``: the credentials of a role of nats.conf (and
    the inbox prefix of a role that may read its own inboxes only)."""
    prefix = ROLE_INBOX_PREFIXES.get(role)
    return {"user": role, "password": password(role), **({"inbox_prefix": prefix} if prefix else {})}


async def wait_for_services(client: Client, names: Sequence[str], timeout: float = 30.0) -> None:
    """Wait until every named micro service answers ``$SRV.PING.<name>`` (no sleeping on guesses)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = set(names)
    while pending:
        for name in list(pending):
            try:
                msg = await client.request(f"$SRV.PING.{name}", b"", timeout=0.5)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                continue
            if json.loads(msg.data).get("name") == name:
                pending.discard(name)
        if pending:
            if loop.time() > deadline:
                raise TimeoutError(f"services not up: {sorted(pending)}")
            await asyncio.sleep(0.1)


async def create_database(admin_url: str, name: str) -> str:
    """``CREATE DATABASE name`` on the PostgreSQL of ``admin_url``; the new database's URL."""
    import asyncpg

    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{admin_url.rpartition('/')[0]}/{name}"


async def count(database_url: str, sql: str, *args: object) -> int:
    """The integer a one-value query (``SELECT count(*) ...``) answers on ``database_url``."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()
