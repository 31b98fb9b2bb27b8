"""How fast this (shared, virtual) machine was while a benchmark ran.

The same code measured minutes apart on these machines differs by up to half in
throughput and more in tail latency, because the hypervisor gives the two vCPUs to
others ("steal" time) and the host's load varies. Each result therefore carries the
steal share of the CPU during its run and the time of a fixed pure-Python workload: two
runs are comparable only when these are close.
"""

from __future__ import annotations

import time


def _cpu_ticks() -> tuple[int, int]:
    """(all ticks, steal ticks) of all CPUs since boot, from /proc/stat (0, 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields[:8]), (fields[7] if len(fields) > 7 else 0)


class Steal:
    """Share of CPU time the hypervisor gave to others between ``start()`` and ``pct()``."""

    def __init__(self) -> None:
        self._t0, self._s0 = _cpu_ticks()

    def pct(self) -> float:
        t1, s1 = _cpu_ticks()
        return round(100 * (s1 - self._s0) / max(1, t1 - self._t0), 1)


def reference_ms() -> float:
    """Milliseconds for a fixed pure-Python workload (best of three): lower is a faster machine."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        d: dict[int, int] = {}
        for i in range(300_000):
            d[i & 1023] = d.get(i & 1023, 0) + i
        best = min(best, time.perf_counter() - t)
    return round(best * 1000, 1)
