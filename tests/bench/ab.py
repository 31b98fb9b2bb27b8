"""``python -m tests.bench.ab REV_A REV_B``: compare two commits on this machine, fairly.

This machine's speed drifts by up to a factor of three within an hour (see ``_machine``),
so one run of each side says little. Here each revision is checked out in a temporary git
worktree, and its own services run the pipeline bench's open loop (the 10,000-node fleet,
``BENCH_OPEN_S`` seconds at ``AB_RATE`` jobs/s, default 1,000). The runs go A B B A,
``AB_ROUNDS`` times (default 1), so a machine that speeds up or slows down during the
comparison favours neither side. It reports every run (jobs/s, p50, p99, CPU µs per job of
each process, steal) and the median of each side, and writes ``bench-results/ab.json``
and ``ab.md``. Compare CPU per job first: latency at a saturating rate mostly measures the
machine.

Both revisions run with this checkout's virtualenv and need ``pipeline.measured_open_loop``
(since 344f5c5).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RATE = int(os.environ.get("AB_RATE", "1000"))
ROUNDS = int(os.environ.get("AB_ROUNDS", "1"))
OUT = Path("bench-results")


async def _one_run(rate: int) -> dict[str, Any]:
    """In a child process whose ``sys.path`` starts with the revision's worktree."""
    from tests.bench import pipeline as p

    try:
        from tests.support.system import system
    except ModuleNotFoundError:  # a revision from before tests.support
        from tests.bench._system import system  # type: ignore[no-redef]

    async with system(p.SERVICES, sim_nodes=p.NODES, sim_interval=5.0) as (sysm, nc):
        col = p.Collector()
        await col.subscribe(nc)
        await p.warm_up(nc, col)
        r = await p.measured_open_loop(sysm, nc, col, rate)
    r.pop("_lat", None)
    return r


def _run_in(tree: Path) -> dict[str, Any]:
    env = {**os.environ, "AB_REPO": str(tree)}
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("natsched-bench-*"))
    done = subprocess.run(
        [sys.executable, __file__, "--run"], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if not os.environ.get("BENCH_KEEP"):  # revisions before 443f238 leave their scratch folder behind
        for left in set(scratch.glob("natsched-bench-*")) - before:
            shutil.rmtree(left, ignore_errors=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"run in {tree} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def _side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    cpu = {k: statistics.median(r["cpu_us_per_job"].get(k, 0) for r in runs) for k in runs[0]["cpu_us_per_job"]}
    return {
        "jobs_per_s": statistics.median(r["jobs_per_s"] for r in runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "cpu_us_per_job": cpu,
    }


def markdown(result: dict[str, Any]) -> str:
    a, b = result["a"], result["b"]
    lines = [
        f"### A/B at {result['rate']}/s offered: A = {a}, B = {b} (order {' '.join(result['order'])})",
        "",
        "| run | side | jobs/s | p50 ms | p99 ms | CPU µs/job | steal % |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, (side, r) in enumerate(zip(result["order"], result["runs"], strict=True), 1):
        lines.append(
            f"| {i} | {side} | {r['jobs_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['cpu_us_per_job'].get('total', '')} | {r.get('steal_pct', '')} |"
        )
    sa, sb = result["median"]["A"], result["median"]["B"]
    procs = sorted(set(sa["cpu_us_per_job"]) | set(sb["cpu_us_per_job"]))
    lines += ["", "Medians, CPU µs per job by process:", "", "| process | A | B | B / A |", "|---|---|---|---|"]
    for k in procs:
        x, y = sa["cpu_us_per_job"].get(k, 0), sb["cpu_us_per_job"].get(k, 0)
        lines.append(f"| {k} | {x:g} | {y:g} | {y / x:.2f} |" if x else f"| {k} | {x:g} | {y:g} | |")
    for key in ("jobs_per_s", "p50_ms", "p99_ms"):
        ratio = f"{sb[key] / sa[key]:.2f}" if sa[key] else ""
        lines.append(f"| {key} | {sa[key]:g} | {sb[key]:g} | {ratio} |")
    return "\n".join(lines)


def main(rev_a: str, rev_b: str) -> int:
    a, b = _git("rev-parse", "--short", rev_a), _git("rev-parse", "--short", rev_b)
    base = Path(tempfile.mkdtemp(prefix="natsched-ab-"))
    trees = {"A": base / "a", "B": base / "b"}
    order = ["A", "B", "B", "A"] * ROUNDS
    runs: list[dict[str, Any]] = []
    try:
        for side, rev in (("A", a), ("B", b)):
            _git("worktree", "add", "--detach", str(trees[side]), rev)
        for i, side in enumerate(order, 1):
            sys.stderr.write(f"== run {i}/{len(order)}: {side} ({a if side == 'A' else b}) ==\n")
            runs.append(_run_in(trees[side]))
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
    result = {
        "a": a,
        "b": b,
        "rate": RATE,
        "order": order,
        "runs": runs,
        "median": {s: _side([r for o, r in zip(order, runs, strict=True) if o == s]) for s in ("A", "B")},
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "ab.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (OUT / "ab.md").write_text(md + "\n")
    sys.stdout.write(md + "\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--run"]:
        sys.path.insert(0, os.environ["AB_REPO"])
        import uvloop

        sys.stdout.write(json.dumps(uvloop.run(_one_run(RATE))) + "\n")
    elif len(sys.argv) == 3:
        sys.exit(main(sys.argv[1], sys.argv[2]))
    else:
        sys.exit(__doc__)
