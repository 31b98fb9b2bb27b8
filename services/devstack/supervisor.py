"""`make run`: nats-server, PostgreSQL, moto and every service under one supervisor.

Environment: NATS_PORT (4222), NATS_MONITOR_PORT (8222), NATS_WS_PORT (9222, the websocket listener of the
web console), CONSOLE_PORT (8090, the console page), PG_PORT (55432), MOTO_PORT (5055),
DATA_DIR (.data), SIM_NODES (50), DATABASE_URL (use it instead of starting PostgreSQL),
AWS_ENDPOINT_URL (use it instead of starting moto), NATS_<ROLE>_PASSWORD (the passwords nats.conf
reads; development defaults from services/runtime/credentials.py). The services connect as `services`.

Output of every process is printed line by line with a label (`gateway    | ...`). A service that exits
on its own is restarted with exponential backoff. Ctrl-C / SIGTERM stops the services (SIGTERM, 10 s,
SIGKILL), then moto, PostgreSQL and nats-server, and exits 0.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.console import ConsoleServer
from services.console import config as console_config
from services.devstack import _util
from services.devstack.moto import Moto
from services.devstack.nats import NatsServer
from services.devstack.postgres import Postgres
from services.devstack.procs import REPO_ROOT, child_environ, service_argv
from services.runtime import credentials
from services.runtime.backoff import delay, sleep_unless

SERVICES = ("gateway", "intake", "placement", "metadata", "provisioner", "teardown")
INFRA_LABELS = ("nats", "postgres", "moto", "console", "devstack")
COLOURS = (36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96)
STOP_TIMEOUT = 10.0
MAX_BACKOFF = 30.0


class Server(Protocol):
    log_path: Path

    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Settings:
    nats_port: int
    nats_monitor_port: int
    nats_ws_port: int
    console_port: int
    pg_port: int
    moto_port: int
    data_dir: Path
    sim_nodes: int
    database_url: str | None
    aws_endpoint_url: str | None

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            nats_port=int(env.get("NATS_PORT", "4222")),
            nats_monitor_port=int(env.get("NATS_MONITOR_PORT", "8222")),
            nats_ws_port=int(env.get("NATS_WS_PORT", "9222")),
            console_port=int(env.get("CONSOLE_PORT", "8090")),
            pg_port=int(env.get("PG_PORT", "55432")),
            moto_port=int(env.get("MOTO_PORT", "5055")),
            data_dir=Path(env.get("DATA_DIR", ".data")).absolute(),
            sim_nodes=int(env.get("SIM_NODES", "50")),
            database_url=env.get("DATABASE_URL") or None,
            aws_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        )


def has_main(module: str) -> bool:
    """Whether package `services.<module>` has a __main__.py (found without importing the package)."""
    try:
        spec = importlib.util.find_spec(f"services.{module}")
    except ImportError:
        return False
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    return any((Path(loc) / "__main__.py").is_file() for loc in locations)


class Console:
    """Writes `label | line` to stdout, the label padded and (on a terminal) coloured."""

    def __init__(self, labels: list[str]) -> None:
        self.width = max(map(len, labels))
        self.colour = sys.stdout.isatty()
        self.codes = {label: COLOURS[i % len(COLOURS)] for i, label in enumerate(labels)}

    def line(self, label: str, text: str) -> None:
        prefix = f"{label:<{self.width}} |"
        if self.colour:
            prefix = f"\033[{self.codes.get(label, 37)}m{prefix}\033[0m"
        sys.stdout.write(f"{prefix} {text}\n")
        sys.stdout.flush()


class LogTail:
    """Follows a log file written by another process (nats-server, PostgreSQL, moto)."""

    def __init__(self, path: Path, label: str, console: Console) -> None:
        self.path, self.label, self.console = path, label, console
        self.pos = path.stat().st_size if path.exists() else 0
        self.rest = b""

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.pos)
                chunk = f.read()
        except OSError:
            return
        self.pos += len(chunk)
        *lines, self.rest = (self.rest + chunk).split(b"\n")
        for line in lines:
            self.console.line(self.label, line.decode(errors="replace").rstrip())

    async def follow(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(0.2)


class Child:
    """One service process, restarted with exponential backoff until `stopping` is set."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], console: Console) -> None:
        self.label, self.argv, self.env, self.console = label, argv, env, console

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        restarts = 0
        while not stopping.is_set():
            started = loop.time()
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                limit=1 << 20,
            )
            assert proc.stdout is not None
            pump = asyncio.create_task(self._pump(proc.stdout))
            exited = asyncio.create_task(proc.wait())
            stop = asyncio.create_task(stopping.wait())
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not exited.done():
                await self._terminate(proc.pid, exited)
            _util.signal_group(proc.pid, signal.SIGKILL)  # anything it left behind in its group
            await pump
            if stopping.is_set():
                self.console.line("devstack", f"{self.label} stopped (exit code {proc.returncode})")
                return
            restarts = 1 if loop.time() - started > 60 else restarts + 1  # a long run starts over
            wait = delay(restarts, base=1.0, cap=MAX_BACKOFF)
            why = f"{self.label} exited unexpectedly (code {proc.returncode})"
            self.console.line("devstack", f"{why}; restarting in {wait:g} s")
            await sleep_unless(stopping, wait)

    async def _terminate(self, pid: int, exited: asyncio.Task[int]) -> None:
        _util.signal_group(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), STOP_TIMEOUT)
        except TimeoutError:
            self.console.line("devstack", f"{self.label} ignored SIGTERM for {STOP_TIMEOUT:g} s: SIGKILL")
            _util.signal_group(pid, signal.SIGKILL)
            await exited

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than the stream limit: dropped
                self.console.line(self.label, "[line too long, dropped]")
                continue
            if not line:
                return
            self.console.line(self.label, line.decode(errors="replace").rstrip())


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        credentials.apply_server_defaults()  # nats-server (a child) reads its users' passwords from the env
        self.services = [name for name in SERVICES if has_main(name)]
        self.simnodes = settings.sim_nodes > 0 and has_main("simnodes")
        self.console = Console([*self.services, "simnodes", *INFRA_LABELS])
        self.stopping = asyncio.Event()
        data = settings.data_dir
        self.nats = NatsServer(
            REPO_ROOT / "nats.conf",
            settings.nats_port,
            settings.nats_monitor_port,
            store_dir=data / "nats",
            log_dir=data / "logs",
            websocket_port=settings.nats_ws_port,
        )
        page = console_config.from_environment((self.nats.websocket_url,))
        self.web = ConsoleServer(page, settings.console_port, log_dir=data / "logs")
        self.postgres = None if settings.database_url else Postgres(data / "pg", settings.pg_port)
        self.moto = None if settings.aws_endpoint_url else Moto(settings.moto_port, log_dir=data / "logs")

    def say(self, text: str) -> None:
        self.console.line("devstack", text)

    @property
    def database_url(self) -> str:
        return self.settings.database_url or (self.postgres.dsn if self.postgres else "")

    @property
    def aws_endpoint_url(self) -> str:
        return self.settings.aws_endpoint_url or (self.moto.endpoint_url if self.moto else "")

    def _infra(self) -> dict[str, Server]:
        infra: dict[str, Server] = {"nats": self.nats, "console": self.web}
        if self.postgres is not None:
            infra["postgres"] = self.postgres
        if self.moto is not None:
            infra["moto"] = self.moto
        return infra

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        infra = self._infra()
        tails = [LogTail(server.log_path, label, self.console) for label, server in infra.items()]
        followers = [asyncio.create_task(tail.follow()) for tail in tails]
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"starting {', '.join(infra)} (data in {self.settings.data_dir})")
        results = await asyncio.gather(
            *(asyncio.to_thread(server.start) for server in infra.values()), return_exceptions=True
        )
        failed = False
        for label, result in zip(infra, results, strict=True):
            if isinstance(result, BaseException):
                self.say(f"{label} failed to start: {result}")
                failed = True
        children: list[asyncio.Task[None]] = []
        if not failed and not self.stopping.is_set():
            children = [asyncio.create_task(child.run(self.stopping)) for child in self._children()]
            self._banner()
            await self.stopping.wait()
        self.stopping.set()
        await asyncio.gather(*children, return_exceptions=True)  # infrastructure is stopped regardless
        for label, server in reversed(infra.items()):
            self.say(f"stopping {label}")
            try:
                await asyncio.to_thread(server.stop)
            except Exception as err:  # keep stopping the others
                self.say(f"stopping {label} failed: {err}")
                failed = True
        for tail in tails:
            tail.poll()
        for follower in followers:
            follower.cancel()
        self.say("all stopped")
        return 1 if failed else 0

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            self.say(f"{sig.name}: shutting down")
        self.stopping.set()

    def _children(self) -> list[Child]:
        env = child_environ(
            {
                "NATS_URL": self.nats.url,
                "DATABASE_URL": self.database_url,
                "AWS_ENDPOINT_URL": self.aws_endpoint_url,
                **credentials.client_environ("services"),
            }
        )
        defaults = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "eu-central-1",
            "LOG_FORMAT": "console",
        }
        env = {**defaults, **env}
        children = [Child(name, service_argv(name), env, self.console) for name in self.services]
        if self.simnodes:
            argv = service_argv("simnodes", ["--count", str(self.settings.sim_nodes)])
            children.append(Child("simnodes", argv, env, self.console))
        return children

    def _banner(self) -> None:
        services = ", ".join(self.services) or "none found yet"
        if self.simnodes:
            services += f", simnodes ({self.settings.sim_nodes} nodes)"
        for line in (
            "dev stack is up",
            f"  NATS        {self.nats.url}   monitor {self.nats.monitor_url}",
            "              users services, manager, node, monitor, console, admin (passwords: docs/OPERATIONS.md)",
            f"  PostgreSQL  {self.database_url}",
            f"  EC2 (moto)  {self.aws_endpoint_url}   region eu-central-1",
            f"  console     {self.web.url}   (NATS websocket {self.nats.websocket_url}, user console)",
            f"  services    {services}",
            "  Ctrl-C stops everything",
        ):
            self.say(line)


def main() -> int:
    try:
        supervisor = Supervisor(Settings.from_env())
    except (FileNotFoundError, ValueError) as err:  # no binaries, or a malformed port number
        sys.stderr.write(f"devstack: {err}\n")
        return 1
    return asyncio.run(supervisor.run())
