"""What the soak records at each measurement point, and how it is shown (pure, but for the /proc walk).

A :class:`Sample` is one row of ``bench-results/soak.md``: resident memory (RSS now, not peak) of
every process of the system, the JetStream store and PostgreSQL database sizes, and how long each
service took to answer ``$SRV.PING.<name>`` after a ``kill -9`` and a restart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import msgspec

RESTARTED = ("placement", "gateway", "teardown", "metadata")
"""The services killed (-9) and restarted at each measurement point, one at a time, in this order."""

PROCESSES = (
    "nats-server",
    "postgres",
    "moto",
    "gateway",
    "intake",
    "placement",
    "metadata",
    "provisioner",
    "teardown",
    "simnodes",
)
"""Columns of the RSS table, in this order (a process of another kind is shown under its own label)."""


class Sample(msgspec.Struct, kw_only=True):
    jobs: int
    """Jobs submitted (a ``submitted`` reply) so far."""
    elapsed_s: float
    rate: float
    """Jobs/s achieved since the previous sample."""
    rss_mb: dict[str, float]
    """RSS now per process kind (PostgreSQL: the postmaster and all its backends summed)."""
    js_store_bytes: int
    """JetStream's file store as ``/jsz`` reports it (all streams, the snapshot store included)."""
    stream_bytes: dict[str, int]
    pg_bytes: int
    """``pg_database_size`` of the scheduler's database."""
    restart_s: dict[str, float | None]
    """kill -9 to the restarted instance answering ``$SRV.PING.<name>``: the median of
    ``restart_tries`` (None: the median try not within the timeout)."""
    restart_tries: dict[str, list[float | None]] = {}
    """Every try of each service, in order (one try is noisy on a shared 2-core machine)."""
    decided: int = 0
    failed: int = 0
    rejected: int = 0
    retries: int = 0
    """Submits retried (503 while a backlog drains, no responders while the gateway restarts, timeouts)."""
    errors: int = 0
    """Jobs given up after every retry, and cancels/completes answered with an unexpected error."""
    checked_jobs: int = 0
    """Decided jobs whose whole history the streams held, checked by the invariant checker."""
    violations: dict[str, list[str]] = {}
    """The checker's findings (at most 20 of each kind); empty: green."""


def label(cmdline: Sequence[str]) -> str | None:
    """The process kind of a command line (``python -m services.placement`` -> ``placement``), None if
    it is not one of the system's."""
    if not cmdline:
        return None
    if "-m" in cmdline:
        i = cmdline.index("-m")
        if i + 1 < len(cmdline) and cmdline[i + 1].startswith("services."):
            return cmdline[i + 1].split(".")[1]
    exe = Path(cmdline[0]).name
    if exe == "nats-server":
        return "nats-server"
    if exe.startswith("postgres"):  # the postmaster, and backends retitled "postgres: ..."
        return "postgres"
    if any(Path(a).name == "moto_server" for a in cmdline[:3]):
        return "moto"
    return None


def sum_rss(procs: Iterable[tuple[str | None, int]]) -> dict[str, float]:
    """MB per kind from (kind, RSS bytes) pairs; processes of no kind are left out."""
    out: dict[str, float] = {}
    for kind, rss in procs:
        if kind is not None:
            out[kind] = out.get(kind, 0.0) + rss / 2**20
    return {k: round(v, 1) for k, v in out.items()}


def _stat(pid: int) -> tuple[int, list[str], int] | None:
    """(parent pid, command line, RSS bytes) of a live process, None if it is gone or a kernel thread."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return ppid, argv, rss


def system_rss(roots: Iterable[int]) -> dict[str, float]:
    """RSS per process kind of every process descending from ``roots`` (this harness, and the
    postmaster, which ``pg_ctl`` detaches), roots included."""
    table = {int(p): st for p in os.listdir("/proc") if p.isdigit() and (st := _stat(int(p))) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, ()))
    return sum_rss((label(table[p][1]), table[p][2]) for p in seen)


def ratio(samples: Sequence[Sample], at: int, value: str, key: str | None = None) -> float | None:
    """The last sample's ``value`` (``key`` of it for a dict) over the value at the first sample
    with at least ``at`` jobs; None when there is no such sample, it is the last one, or it is 0."""
    base = next((x for x in samples if x.jobs >= at), None)
    if base is None or base is samples[-1]:
        return None

    def get(x: Sample) -> float | None:
        v = getattr(x, value)
        if isinstance(v, Mapping):
            v = v.get(key)
        return None if v is None else float(v)

    b, last = get(base), get(samples[-1])
    return None if not b or last is None else round(last / b, 2)


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f}"


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def markdown(samples: Sequence[Sample], preamble: str) -> str:
    kinds = [k for k in PROCESSES if any(k in x.rss_mb for x in samples)]
    kinds += sorted({k for x in samples for k in x.rss_mb} - set(kinds))
    head = (
        ["jobs", "elapsed (s)", "submitted/s", "decided/s"]
        + [f"RSS {k} (MB)" for k in kinds]
        + ["JetStream store (MB)", "PostgreSQL db (MB)"]
        + [f"ready after kill -9: {n} (s)" for n in RESTARTED]
        + ["decided / failed", "retries", "errors", "checked / violations"]
    )
    out = [preamble, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    prev: Sample | None = None
    for x in samples:
        dt = x.elapsed_s - (prev.elapsed_s if prev else 0.0)
        done = x.decided + x.failed + x.rejected - (prev.decided + prev.failed + prev.rejected if prev else 0)
        cells = [f"{x.jobs:,}", f"{x.elapsed_s:.0f}", f"{x.rate:.0f}", f"{done / dt:.0f}" if dt > 0 else "0"]
        prev = x
        cells += [f"{x.rss_mb[k]:.0f}" if k in x.rss_mb else "—" for k in kinds]
        cells += [_mb(x.js_store_bytes), _mb(x.pg_bytes)]
        cells += [_s(x.restart_s.get(n)) for n in RESTARTED]
        cells += [f"{x.decided:,} / {x.failed:,}", str(x.retries), str(x.errors)]
        cells += [f"{x.checked_jobs:,} / {sum(len(v) for v in x.violations.values())}"]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", *bars(samples)]
    return "\n".join(out)


def bars(samples: Sequence[Sample]) -> list[str]:
    """The issue's bars, as far as the samples reach: RSS and disk at the end within 1.25x of 300,000
    jobs; restart-to-ready within 1.5x of 100,000 jobs and under 5 s."""
    if not samples:
        return []
    lines = []
    flat = {k: ratio(samples, 300_000, "rss_mb", k) for k in sorted(samples[-1].rss_mb)}
    flat["JetStream store"] = ratio(samples, 300_000, "js_store_bytes")
    flat["PostgreSQL db"] = ratio(samples, 300_000, "pg_bytes")
    if any(v is not None for v in flat.values()):
        shown = ", ".join(f"{k} {v}x" for k, v in flat.items() if v is not None)
        lines.append(f"Last row over the row at 300,000 jobs (bar: <= 1.25): {shown}.")
    quick = {n: ratio(samples, 100_000, "restart_s", n) for n in RESTARTED}
    if any(v is not None for v in quick.values()):
        shown = ", ".join(f"{k} {v}x" for k, v in quick.items() if v is not None)
        lines.append(f"Restart-to-ready, last row over the row at 100,000 jobs (bar: <= 1.5, and < 5 s): {shown}.")
    return lines


def plot(samples: Sequence[Sample], path: Path) -> Path | None:
    """RSS per process, store and database size, restart times against jobs; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    xs = [x.jobs for x in samples]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    for k in sorted({k for x in samples for k in x.rss_mb}):
        a.plot(xs, [x.rss_mb.get(k, float("nan")) for x in samples], marker="o", label=k)
    a.set_ylabel("RSS (MB)")
    a.legend(fontsize="small", ncol=2)
    b.plot(xs, [x.js_store_bytes / 2**20 for x in samples], marker="o", label="JetStream store")
    b.plot(xs, [x.pg_bytes / 2**20 for x in samples], marker="o", label="PostgreSQL database")
    b.set_ylabel("disk (MB)")
    b.legend(fontsize="small")
    for n in RESTARTED:
        ys = [x.restart_s.get(n) for x in samples]
        c.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=n)
    c.set_ylabel("ready after kill -9 (s)")
    c.set_xlabel("jobs submitted")
    c.legend(fontsize="small")
    for ax in (a, b, c):
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.suptitle("make soak: these lines should be flat after the first retention window")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
