"""Run a service (`python -m services.<name>`) as a real child process, for tests and chaos tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.devstack import _util

REPO_ROOT = Path(__file__).resolve().parents[2]


def child_environ(env: Mapping[str, str]) -> dict[str, str]:
    """os.environ plus `env`, with the repo root on PYTHONPATH (so `-m services.<name>` works from any cwd)
    and unbuffered output (so log lines arrive as they are written)."""
    merged = {**os.environ, **env}
    python_path = [str(REPO_ROOT), *filter(None, merged.get("PYTHONPATH", "").split(os.pathsep))]
    merged["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(python_path))
    merged.setdefault("PYTHONUNBUFFERED", "1")
    return merged


def service_argv(name: str, args: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", f"services.{name}", *args]


class ServiceProcess:
    """A running service in its own session/process group: stop() and kill() reach all its processes."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path | None) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self._kept: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """None while running, else the exit code (negative: killed by that signal)."""
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (graceful shutdown), wait up to `timeout`, then SIGKILL; returns the exit code."""
        return _util.terminate(self.proc, timeout)

    def kill(self) -> int:
        """SIGKILL the whole process group (a crash)."""
        return _util.kill(self.proc)

    def log_text(self) -> str:
        """Everything the service wrote so far ("" if its output is inherited); once the log file is
        gone, what :meth:`keep_log` read."""
        if self.log_path is None or not self.log_path.exists():
            return self._kept or ""
        return self.log_path.read_text(errors="replace")

    def keep_log(self) -> None:
        """Read the log into memory, so it can be read after its folder is removed."""
        self._kept = self.log_text()

    def __repr__(self) -> str:
        return f"ServiceProcess({self.name!r}, pid={self.pid}, returncode={self.returncode})"


def spawn_service(
    name: str, env: Mapping[str, str], args: Sequence[str] = (), log_path: Path | None = None
) -> ServiceProcess:
    """Start `python -m services.<name> *args` with `env` added to os.environ; stdout and stderr are
    appended to `log_path` (or inherited if None)."""
    proc = _util.popen_logged(service_argv(name, args), log_path, env=child_environ(env))
    return ServiceProcess(name, proc, log_path)
