"""CPU of every process of a running :class:`System` (moto and this load generator included).

``System.usage()`` covers nats-server, the services, the simulated fleet and PostgreSQL;
the lifecycle and idle benchmarks also want moto (dedicated jobs go through it) and the
benchmark's own process, so both are added here under ``moto`` and ``client``.
"""

from __future__ import annotations

import contextlib
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
