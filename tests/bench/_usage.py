"""CPU of every process of a running :class:`System` (moto and this load generator included).

``System.usage()`` covers nats-server, the services, the simulated fleet and PostgreSQL;
the lifecycle and idle benchmarks also want moto (dedicated jobs go through it) and the
benchmark's own process, so both are added here under ``moto`` and ``client``.
"""

from __future__ import annotations

import contextlib
import os
import resource
from typing import Any

from tests.support.procs import proc_usage
from tests.support.system import System

FLEET = "simnodes"
"""Label prefix of the simulated fleet's processes in ``System.usage()``."""


def cpu_seconds(sysm: System) -> dict[str, float]:
    """CPU seconds so far of each process, by label (``gateway#0``, ``nats-server``, ``postgres``,
    ``moto``, ``client``, ``simnodes#0``...)."""
    out = {k: v["cpu_s"] for k, v in sysm.usage().items()}
    proc: Any = getattr(sysm.moto, "_proc", None) if sysm.moto else None
    if proc is not None:
        with contextlib.suppress(OSError):
            out["moto"] = proc_usage(proc.pid)[0]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["client"] = ru.ru_utime + ru.ru_stime
    return out


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """CPU seconds spent by each process between two :func:`cpu_seconds` readings."""
    return {k: v - a.get(k, 0.0) for k, v in b.items()}


def is_fleet(label: str) -> bool:
    return label.startswith(FLEET)


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq; neither idle,
    iowait nor steal), from /proc/stat: minus our processes' CPU, what others ran meanwhile."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def others_pct(busy_s: float, ours: dict[str, float], seconds: float) -> float:
    """% of one core used by processes outside the measured system (e.g. other benchmarks or test
    runs sharing the machine) over ``seconds``: the machine's busy time minus ``ours``."""
    return round(max(0.0, 100 * (busy_s - sum(ours.values())) / max(seconds, 1e-9)), 1)
