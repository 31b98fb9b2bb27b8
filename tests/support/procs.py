"""Processes as benchmarks, chaos runs and the hostile-input tests see them: whether a service
exists in this checkout, and what a process used (CPU seconds, peak RSS) from /proc."""

from __future__ import annotations

import importlib.util
import os

TICK = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second, the unit of the CPU times in /proc/<pid>/stat."""


def present(name: str) -> bool:
    """Whether ``python -m services.<name>`` exists in this checkout."""
    try:
        return importlib.util.find_spec(f"services.{name}.__main__") is not None
    except ModuleNotFoundError:
        return False


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a live process so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def proc_usage(pid: int) -> tuple[float, int]:
    """(cpu seconds, peak RSS bytes) of a live process, from /proc."""
    cpu = cpu_seconds(pid)
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cpu, peak


def tree_usage(pid: int) -> tuple[float, int]:
    """(cpu seconds, peak RSS bytes) of a process with its children, live and exited: a
    PostgreSQL postmaster forks a backend per connection, which does the work."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    cpu, peak = proc_usage(pid)
    cpu += (int(parts[13]) + int(parts[14])) / TICK  # children that have exited
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) != pid:
                    continue
            c, r = proc_usage(int(entry))
        except (OSError, ValueError, IndexError):
            continue
        cpu, peak = cpu + c, max(peak, r)
    return cpu, peak
