"""Small helpers shared by the dev-stack process wrappers (not public API)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

POLL_INTERVAL = 0.05


def find_executable(name: str) -> Path:
    """Find `name` next to the running interpreter (the venv's bin dir) first, then on PATH."""
    beside = Path(sys.executable).parent / name  # not resolved: the venv's python is a symlink
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name!r} not found next to {sys.executable} nor on PATH")
    return Path(found)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def http_status(url: str, timeout: float = 1.0, method: str = "GET") -> int | None:
    """The HTTP status `url` answers with (4xx/5xx included), or None if nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, ValueError):
        return None


def http_json(url: str, timeout: float = 1.0) -> Any:
    """The decoded JSON body `url` answers with, or None."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll `ready` until it is true; raise with the log tail on timeout or if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            problem = f"{what} exited with code {proc.returncode} before it was ready"
            break
        if time.monotonic() > deadline:
            problem = f"{what} was not ready within {timeout:g} s"
            break
        time.sleep(POLL_INTERVAL)
    else:
        return
    tail = log_tail(log_path) if log_path is not None else ""
    raise RuntimeError(f"{problem}\n--- {log_path} (tail) ---\n{tail}" if tail else problem)


def popen_logged(
    argv: Sequence[str], log_path: Path | None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (so terminal Ctrl-C does not reach it and the whole group can be
    signalled); stdout and stderr are appended to `log_path`, or inherited if it is None."""
    if log_path is None:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM the process group of `proc`, wait up to `timeout`, then SIGKILL it; return the exit code.
    (`proc` must have been started with start_new_session=True, see popen_logged.)"""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    signal_group(proc.pid, signal.SIGKILL)  # stragglers left in the group
    return proc.returncode


def kill(proc: subprocess.Popen[bytes]) -> int:
    signal_group(proc.pid, signal.SIGKILL)
    return proc.wait()


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process (from /proc on Linux, else `ps`)."""
    table: dict[int, tuple[int, str]] = {}
    proc_dir = Path("/proc")
    if (proc_dir / "self" / "stat").exists():
        for entry in proc_dir.iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                state, ppid = stat[stat.rfind(")") + 2 :].split()[:2]
                table[int(entry.name)] = (int(ppid), state)
        return table
    ps = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,stat="], capture_output=True, text=True, check=True)
    for line in ps.stdout.splitlines():
        pid, ppid, state = line.split()[:3]
        table[int(pid)] = (int(ppid), state[0])
    return table


def alive(pids: Iterable[int]) -> list[int]:
    """Those of `pids` that are running (zombies count as gone)."""
    table = process_table()
    return [pid for pid in pids if pid in table and table[pid][1] != "Z"]


def kill_tree(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL `pid` and its direct children, and wait until they are gone. The parent is SIGSTOPped first
    so it cannot fork while its children are listed. (PostgreSQL puts each child in its own process group,
    so a group kill of the postmaster would not reach them.)"""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return
    victims = [pid, *(child for child, (ppid, _) in process_table().items() if ppid == pid)]
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while left := alive(victims):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {left} survived SIGKILL")
        time.sleep(POLL_INTERVAL)


class Managed:
    """``with server:`` starts it and stops it on the way out, whatever happened inside."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ServerProcess(Managed):
    """A child server started by ``start()``: SIGTERM-then-SIGKILL ``stop``, ``kill``, and a
    context manager that stops it and removes its scratch folder (``_tmp``) on exit."""

    _proc: subprocess.Popen[bytes] | None = None
    _tmp: Path | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL."""
        if self._proc is not None:
            terminate(self._proc, timeout)

    def kill(self) -> None:
        """SIGKILL, no goodbye (for chaos tests)."""
        if self._proc is not None:
            kill(self._proc)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
