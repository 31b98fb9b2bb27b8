"""The dev stack starts real nats-server, PostgreSQL and moto processes, and stops them without leftovers."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import aioboto3
import asyncpg
import nats
import pytest
from nats.aio.msg import Msg

from services.devstack import Moto, NatsServer, Postgres, free_port, spawn_service
from services.devstack._util import alive
from tests.support.servers import REPO, nats_auth

pytestmark = pytest.mark.integration


async def test_nats_server_start_request_stop(tmp_path: Path) -> None:
    server = NatsServer(REPO / "nats.conf", store_dir=tmp_path / "store", log_dir=tmp_path)
    with server:
        pid = server.pid
        assert pid is not None
        nc = await nats.connect(server.url, **nats_auth())
        try:

            async def echo(msg: Msg) -> None:
                await msg.respond(b"pong:" + msg.data)

            sub = await nc.subscribe("devstack.echo", cb=echo)
            reply = await nc.request("devstack.echo", b"ping", timeout=2)
            assert reply.data == b"pong:ping"
            await sub.unsubscribe()
            js = nc.jetstream()
            await js.add_stream(name="DEVSTACK", subjects=["devstack.js.>"])
            ack = await js.publish("devstack.js.one", b"x")
            assert ack.seq == 1
        finally:
            await nc.close()
    assert not server.running
    assert alive([pid]) == []
    assert (tmp_path / "store" / "jetstream").is_dir()
    assert "Server is ready" in server.log_path.read_text()


def test_nats_server_restart_keeps_ports_and_streams(tmp_path: Path) -> None:
    with NatsServer(REPO / "nats.conf", store_dir=tmp_path / "store", log_dir=tmp_path) as server:
        port, first_pid = server.port, server.pid
        server.kill()
        assert not server.running
        server.restart()
        assert server.running and server.port == port and server.pid != first_pid
        assert server.healthy()


def test_a_picked_port_taken_before_the_server_binds_it_is_picked_again(tmp_path: Path) -> None:
    """free_port() only says a port was free a moment ago: here it is taken in between."""
    server = NatsServer(None, store_dir=tmp_path / "js", log_dir=tmp_path)
    taken = server.port
    with socket.create_server(("127.0.0.1", taken)):
        server.start()
        try:
            assert server.running and server.port != taken
        finally:
            server.stop()


async def test_postgres_data_survives_restart(tmp_path: Path) -> None:
    pg = Postgres(tmp_path / "pg")
    with pg:
        conn = await asyncpg.connect(pg.dsn)
        try:
            await conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL)")
            await conn.execute("INSERT INTO t VALUES (1, 'kept')")
        finally:
            await conn.close()
        first_pid = pg.pid
        assert first_pid is not None
        pg.stop()
        assert alive([first_pid]) == []
        with pytest.raises(OSError):
            await asyncpg.connect(pg.dsn, timeout=2)

        pg.start()
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT name FROM t WHERE id = 1") == "kept"
        finally:
            await conn.close()

        pg.kill()  # a crash: comes back after recovery, committed data intact
        pg.start()
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM t") == 1
        finally:
            await conn.close()
        last_pid = pg.pid
    assert last_pid is not None and alive([last_pid]) == []


async def test_moto_runs_and_describes_an_instance() -> None:
    with Moto() as moto:
        session = aioboto3.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-central-1"
        )
        async with session.client("ec2", endpoint_url=moto.endpoint_url) as ec2:
            launch = {"ImageId": "ami-12345678", "InstanceType": "t3.micro", "MinCount": 1, "MaxCount": 1}
            run = await ec2.run_instances(**launch)
            instance_id = run["Instances"][0]["InstanceId"]
            described = await ec2.describe_instances(InstanceIds=[instance_id])
            instance = described["Reservations"][0]["Instances"][0]
            assert instance["InstanceType"] == "t3.micro"
            assert instance["Placement"]["AvailabilityZone"].startswith("eu-central-1")
        pid = moto._proc.pid if moto._proc else None
    assert pid is not None and alive([pid]) == []


def _processes_mentioning(text: str) -> list[int]:
    """Live processes with `text` in their command line or environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            except OSError:
                continue
            if text.encode() in seen:
                found.append(int(entry.name))
    return alive(found)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="scans /proc")
def test_spawn_service_runs_the_supervisor_and_stops_it(tmp_path: Path) -> None:
    bad = spawn_service("devstack", {"NATS_PORT": "nope"}, log_path=tmp_path / "bad.log")
    assert bad.wait(timeout=30) == 1
    assert "devstack: invalid literal" in bad.log_text()

    # The supervisor with PostgreSQL and moto "external" starts nats-server and whichever services exist
    # (they get NATS_URL in their environment): SIGTERM must stop them all and leave nothing behind.
    nats_port, console_port = free_port(), free_port()
    env = {
        "NATS_PORT": str(nats_port),
        "NATS_MONITOR_PORT": str(free_port()),
        "NATS_WS_PORT": str(free_port()),
        "CONSOLE_PORT": str(console_port),
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/unused",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
        "SIM_NODES": "0",
    }
    stack = spawn_service("devstack", env, log_path=tmp_path / "stack.log")
    try:
        deadline = time.monotonic() + 30
        while "dev stack is up" not in stack.log_text():
            assert stack.returncode is None, stack.log_text()
            assert time.monotonic() < deadline, stack.log_text()
            time.sleep(0.1)
        assert _processes_mentioning(str(tmp_path / "data")), "nats-server should be running"
        assert f"console     http://127.0.0.1:{console_port}/" in stack.log_text()  # the web console's page
        time.sleep(1)  # let the services (if any) get going
    finally:
        code = stack.stop(timeout=20)
    assert code == 0, stack.log_text()
    assert "all stopped" in stack.log_text()
    assert _processes_mentioning(str(tmp_path / "data")) == []
    assert _processes_mentioning(f"NATS_URL=nats://127.0.0.1:{nats_port}") == []
