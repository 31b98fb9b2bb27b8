"""Fixtures shared by every test: real nats-server and service processes."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from services.devstack import Moto, NatsServer, Postgres, ServiceProcess, database_url_from_env, spawn_service
from services.devstack.credentials import Role, apply_server_defaults, client_environ, password

REPO = Path(__file__).resolve().parent.parent

# nats.conf reads every user's password from the environment: nats-servers started by the tests inherit
# the development defaults (unless set), and service processes spawned directly connect as `services`.
apply_server_defaults()
for _name, _value in client_environ("services").items():
    os.environ.setdefault(_name, _value)


def nats_auth(role: Role = "admin") -> dict[str, str]:
    """``nats.connect(url, **nats_auth("manager"))``: the credentials of a role of nats.conf."""
    return {"user": role, "password": password(role)}


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with the repo's nats.conf, on free ports, JetStream in tmp."""
    server = NatsServer(config=REPO / "nats.conf", store_dir=tmp_path / "js", log_dir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL for the session (or ``DATABASE_URL``); tests get their own database."""
    url = database_url_from_env()
    if url:
        yield url
        return
    server = Postgres(tmp_path_factory.mktemp("pg") / "data")
    server.start()
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
async def database_url(postgres_server: str) -> AsyncIterator[str]:
    """A fresh, empty database on the session's PostgreSQL, dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = postgres_server.rpartition("/")
    yield f"{base}/{name}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """A real moto server speaking the EC2 HTTP API (reset before each test that uses ``ec2_endpoint``)."""
    server = Moto(log_dir=tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ec2_endpoint(moto_server: Moto) -> str:
    moto_server.reset()
    return moto_server.endpoint_url


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(
        nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, **nats_auth("admin")
    )
    try:
        yield client
    finally:
        await client.close()


async def wait_for_services(client: Client, names: list[str], timeout: float = 30.0) -> None:
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


Spawn = Callable[..., Awaitable[list[ServiceProcess]]]


@pytest.fixture
async def services(nats_server: NatsServer, nc: Client, tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start services as real processes (``python -m services.<name>``) and wait until they are up."""
    started: list[ServiceProcess] = []

    async def spawn(*names: str, env: dict[str, str] | None = None, wait: bool = True) -> list[ServiceProcess]:
        base = {
            "NATS_URL": nats_server.url,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            **client_environ("services"),
            **(env or {}),
        }
        procs = [spawn_service(n, base, log_path=tmp_path / f"{n}-{len(started) + i}.log") for i, n in enumerate(names)]
        started.extend(procs)
        if wait:
            await wait_for_services(nc, [n for n in names if n != "simnodes"])
        return procs

    try:
        yield spawn
    finally:
        codes = {p.name: p.stop() for p in started}
        crashed = {n: c for n, c in codes.items() if c not in (0, -15, -9)}
        assert not crashed, f"services exited badly: {crashed}"


class Events:
    """A core subscription collecting events by job id, to wait on an event itself."""

    def __init__(self) -> None:
        self.by_job: dict[str, list[dict[str, Any]]] = {}
        self._changed = asyncio.Condition()

    async def cb(self, msg: Any) -> None:
        data = json.loads(msg.data)
        async with self._changed:
            self.by_job.setdefault(data.get("job_id", ""), []).append(data)
            self._changed.notify_all()

    async def wait(self, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: job_id in self.by_job), timeout)
            return self.by_job[job_id][0]


@pytest.fixture
async def events(nc: Client) -> Callable[..., Awaitable[Events]]:
    async def subscribe(*subjects: str) -> Events:
        ev = Events()
        for subject in subjects:
            await nc.subscribe(subject, cb=ev.cb)
        await nc.flush()
        return ev

    return subscribe
