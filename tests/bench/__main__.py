"""``python -m tests.bench [name ...]``: run benchmarks, write bench-results/.

Each benchmark is a module of this package listed in ``BENCHES`` exposing
``async def run() -> dict`` (JSON-able figures) and ``def markdown(result) -> str``.
Results go to ``bench-results/results.json`` with the git commit, cores and Python
version; the markdown tables are printed at the end and written beside it.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench._machine import Steal, reference_ms

BENCHES = [
    "placement",
    "consumer",
    "pipeline",
    "floor",
    "metadata",
    "listing",
    "scaleout",
    "replace",
    "plan",
    "console",
    "policies",
    "lifecycle",
]
OUT = Path("bench-results")


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return "unknown"


async def main(names: list[str]) -> int:
    OUT.mkdir(exist_ok=True)
    results: dict[str, Any] = {
        "commit": _commit(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "benches": {},
    }
    tables: list[str] = []
    steal, ref_before = Steal(), reference_ms()
    for name in names:
        try:
            mod = importlib.import_module(f"tests.bench.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"tests.bench.{name}":
                sys.stderr.write(f"bench {name}: not present, skipped\n")
                continue
            raise
        sys.stderr.write(f"== bench {name} ==\n")
        result = await mod.run()
        results["benches"][name] = result
        tables.append(mod.markdown(result))
        (OUT / "results.json").write_text(json.dumps(results, indent=2))
    results["machine_state"] = {
        "reference_ms_before": ref_before,
        "reference_ms_after": reference_ms(),
        "steal_pct": steal.pct(),
    }
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    m = results["machine_state"]
    tables.append(
        f"Machine state: reference workload {m['reference_ms_before']} ms before, {m['reference_ms_after']} ms "
        f"after (lower is faster); {m['steal_pct']}% of CPU time stolen by the hypervisor during the run. "
        "Compare runs only at similar values."
    )
    md = "\n\n".join(tables)
    (OUT / "results.md").write_text(md + "\n")
    sys.stdout.write(md + "\n")
    return 0


if __name__ == "__main__":
    import uvloop  # the load generator is a client too: as cheap a loop as the services get

    sys.exit(uvloop.run(main(sys.argv[1:] or BENCHES)))
