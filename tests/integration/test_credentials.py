"""Wrong credentials are a configuration error, said in one line: a service started without the
``services`` user, or with a wrong password, stops at once (exit 78, no traceback) naming what it
lacks; the ``natsched`` CLI says so on stderr with exit code 4. An unreachable server is still
waited for. Replies are private: a role reads its own inboxes only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from schemas import subjects as s
from services.cli.client import EXIT_DENIED
from services.devstack import NatsServer, ServiceProcess, spawn_service
from services.devstack.ports import free_port
from services.runtime.app import EX_CONFIG
from services.runtime.credentials import Role, password
from tests.support.permissions import SENTINEL
from tests.support.servers import nats_auth
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def start(name: str, url: str, tmp_path: Path, *, env: dict[str, str], args: tuple[str, ...] = ()) -> ServiceProcess:
    base = {"NATS_URL": url, "LOG_FORMAT": "console", "LOG_LEVEL": "info", **env}
    return spawn_service(name, base, args, log_path=tmp_path / f"{name}.log")


async def exit_code(proc: ServiceProcess, timeout: float = 30.0) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


async def test_a_service_without_credentials_names_the_role_it_needs(nats_server: NatsServer, tmp_path: Path) -> None:
    """Without NATS_USER the server's no_auth_user (manager) may not declare the streams."""
    proc = start("intake", nats_server.url, tmp_path, env={"NATS_USER": "", "NATS_PASSWORD": ""})
    assert await exit_code(proc) == EX_CONFIG
    log = proc.log_text()
    assert "Traceback" not in log and "timeout" not in log.lower()
    (line,) = [x for x in log.splitlines() if "may not" in x]
    # its first JetStream request already: the reply inbox it subscribes (the services' own) is refused
    assert (
        f"NATS without NATS_USER (the server's no_auth_user) may not subscribe to {s.SERVICES_INBOX_PREFIX}.>" in line
    )
    assert 'the services connect as role "services" (set NATS_USER=services and NATS_PASSWORD)' in line


async def test_a_role_lacking_a_permission_names_it(nats_server: NatsServer, tmp_path: Path) -> None:
    env = {"NATS_USER": "monitor", "NATS_PASSWORD": password("monitor")}
    proc = start("intake", nats_server.url, tmp_path, env=env)
    assert await exit_code(proc) == EX_CONFIG
    log = proc.log_text()
    assert "Traceback" not in log
    assert f'NATS user "monitor" may not subscribe to {s.SERVICES_INBOX_PREFIX}.>' in log
    assert "set NATS_USER=services" in log


async def test_a_wrong_password_stops_the_service_at_once(nats_server: NatsServer, tmp_path: Path) -> None:
    proc = start("intake", nats_server.url, tmp_path, env={"NATS_USER": "services", "NATS_PASSWORD": "wrong"})
    assert await exit_code(proc) == EX_CONFIG
    log = proc.log_text()
    assert "Traceback" not in log
    assert log.count("authorization violation") == 1
    assert 'NATS refused user "services": authorization violation (check NATS_USER / NATS_PASSWORD)' in log


async def test_an_unreachable_server_is_waited_for(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    proc = start("intake", url, tmp_path, env={"NATS_USER": "services", "NATS_PASSWORD": "dev-services"})
    try:

        async def three_failed_tries() -> bool:
            assert proc.returncode is None, proc.log_text()  # never gives up
            return proc.log_text().count("nats error") >= 3

        await eventually(three_failed_tries, 30, "three failed connects")
        assert "authorization" not in proc.log_text().lower()
    finally:
        proc.stop()


async def test_the_cli_names_wrong_credentials_in_one_line(nats_server: NatsServer, tmp_path: Path) -> None:
    proc = start(
        "cli", nats_server.url, tmp_path, env={}, args=("--user", "manager", "--password", "wrong", "get", "x")
    )
    assert await exit_code(proc) == EXIT_DENIED
    (line,) = proc.log_text().splitlines()
    assert line.startswith("natsched: ") and 'refused user "manager": authorization violation' in line


async def test_the_cli_names_a_permission_the_user_lacks(nats_server: NatsServer, tmp_path: Path) -> None:
    args = ("--user", "monitor", "--password", password("monitor"), "--timeout", "30", "get", "some-job")
    proc = start("cli", nats_server.url, tmp_path, env={}, args=args)
    assert await exit_code(proc) == EXIT_DENIED  # at once, not after the 30 s timeout
    (line,) = proc.log_text().splitlines()
    assert line.startswith(f'natsched: NATS user "monitor" may not publish to {s.JOB_GET}'), line


class Violations:
    def __init__(self) -> None:
        self.seen: asyncio.Queue[str] = asyncio.Queue()

    async def cb(self, e: Exception) -> None:
        self.seen.put_nowait(str(e))


@pytest.mark.parametrize(
    ("role", "own", "others"),
    [
        ("services", s.SERVICES_INBOX_PREFIX, (s.DEFAULT_INBOX_PREFIX, s.CONSOLE_INBOX_PREFIX, s.MONITOR_INBOX_PREFIX)),
        ("monitor", s.MONITOR_INBOX_PREFIX, (s.DEFAULT_INBOX_PREFIX, s.SERVICES_INBOX_PREFIX, s.CONSOLE_INBOX_PREFIX)),
        ("manager", s.DEFAULT_INBOX_PREFIX, (s.SERVICES_INBOX_PREFIX, s.MONITOR_INBOX_PREFIX, s.CONSOLE_INBOX_PREFIX)),
    ],
)
async def test_each_role_reads_its_own_inboxes_only(
    nats_server: NatsServer, role: Role, own: str, others: tuple[str, ...]
) -> None:
    v = Violations()
    client = await nats.connect(nats_server.url, error_cb=v.cb, allow_reconnect=False, **nats_auth(role))
    try:
        assert client.new_inbox().startswith(own + ".")
        for prefix in others:
            await client.subscribe(f"{prefix}.>")
            violation = await asyncio.wait_for(v.seen.get(), 5)
            assert f'permissions violation for subscription to "{prefix}.>"'.lower() in violation.lower()
        await client.subscribe(f"{own}.>")
        await client.publish(SENTINEL, b"")  # the next violation is the sentinel's: own's subscription is allowed
        assert SENTINEL in await asyncio.wait_for(v.seen.get(), 5)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("role", "argv", "denied"),
    [
        ("monitor", ("watch",), f"subscribe to {s.JOB_SUBMITTED}"),
        ("manager", ("simulate-nodes", "1", "--rounds", "1"), "publish to node.status."),
    ],
)
async def test_the_cli_names_a_subscription_or_publication_it_may_not_make(
    nats_server: NatsServer, tmp_path: Path, role: Role, argv: tuple[str, ...], denied: str
) -> None:
    args = ("--user", role, "--password", password(role), *argv)
    proc = start("cli", nats_server.url, tmp_path, env={}, args=args)
    assert await exit_code(proc) == EXIT_DENIED
    (line,) = [x for x in proc.log_text().splitlines() if x.startswith("natsched: ")]
    assert f'NATS user "{role}" may not {denied}' in line, line
