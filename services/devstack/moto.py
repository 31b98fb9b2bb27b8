"""The moto EC2 emulator as a real HTTP server (`moto_server`), for `make run` and tests."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from services.devstack import _util
from services.devstack.ports import free_port


class Moto(_util.ServerProcess):
    """`moto_server -H 127.0.0.1 -p PORT`. Use region eu-central-1, any credentials, and `endpoint_url`."""

    def __init__(
        self,
        port: int | None = None,
        *,
        log_dir: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.port = port or free_port()
        self._tmp = Path(tempfile.mkdtemp(prefix="natsched-moto-")) if log_dir is None else None
        self.log_path = (log_dir or self._tmp or Path()).absolute() / "moto_server.log"
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def answers(self) -> bool:
        return _util.http_status(f"{self.endpoint_url}/moto-api/") is not None

    def start(self) -> None:
        """Start moto_server and wait until it answers HTTP."""
        if self.running:
            return
        argv = [str(_util.find_executable("moto_server")), "-H", "127.0.0.1", "-p", str(self.port)]
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0

        def ready() -> bool:  # our moto bound the port ("Running on ..." logged), and it answers
            with self.log_path.open("rb") as log:
                log.seek(log_start)
                bound = b"Running on" in log.read()
            return bound and self.answers() and self.running

        self._proc = _util.popen_logged(argv, self.log_path)
        try:
            _util.wait_until(
                ready,
                timeout=self.start_timeout,
                what="moto_server",
                proc=self._proc,
                log_path=self.log_path,
            )
        except BaseException:
            self.kill()
            raise

    def reset(self) -> None:
        """Forget every emulated resource (POST /moto-api/reset)."""
        status = _util.http_status(f"{self.endpoint_url}/moto-api/reset", timeout=10.0, method="POST")
        if status != 200:
            raise RuntimeError(f"moto reset answered {status}")
