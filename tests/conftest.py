"""Fixtures shared by every test: real nats-server and service processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from services.devstack import Moto, NatsServer, Postgres, ServiceProcess, database_url_from_env, spawn_service
from services.metadata.adapters import Database
from services.runtime.credentials import apply_server_defaults, client_environ

# the shared helpers assert too: rewrite their asserts as in test modules (before they are imported)
pytest.register_assert_rewrite("tests.support")

from tests.support.config import DEDICATED_PATH, aws_env, write_config  # noqa: E402
from tests.support.events import Events  # noqa: E402
from tests.support.instances import Instances  # noqa: E402
from tests.support.servers import REPO, Spawn, create_database, nats_auth, wait_for_services  # noqa: E402

# nats.conf reads every user's password from the environment: nats-servers started by the tests inherit
# the development defaults (unless set), and service processes spawned directly connect as `services`.
apply_server_defaults()
for _name, _value in client_environ("services").items():
    os.environ.setdefault(_name, _value)


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
    yield await create_database(postgres_server, name)
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
async def instances(nats_server: NatsServer) -> AsyncIterator[Instances]:
    """In-process placement instances (``await instances.start()``), stopped at the end."""
    i = Instances(nats_server.url)
    try:
        yield i
    finally:
        await i.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """The metadata service's database adapter on a fresh, migrated database (no service running)."""
    d = Database(database_url)
    await d.open()
    await d.migrate()
    try:
        yield d
    finally:
        await d.close()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(
        nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, **nats_auth("admin")
    )
    try:
        yield client
    finally:
        await client.close()


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


@pytest.fixture
async def events(nc: Client) -> Callable[..., Awaitable[Events]]:
    async def subscribe(*subjects: str) -> Events:
        ev = Events()
        for subject in subjects:
            await nc.subscribe(subject, cb=ev.cb)
        await nc.flush()
        return ev

    return subscribe


@pytest.fixture
async def dedicated_path(services: Spawn, ec2_endpoint: str, tmp_path: Path) -> None:
    """Every service a dedicated job goes through (``DEDICATED_PATH``), on moto's EC2 with the tests' config."""
    await services(*DEDICATED_PATH, env=aws_env(ec2_endpoint, write_config(tmp_path)))
