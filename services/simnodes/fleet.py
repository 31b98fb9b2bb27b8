"""A deterministic, varied fleet of simulated nodes (pure: no I/O)."""

from __future__ import annotations

import math
import random

from schemas.events import NodeStatus

TECH_SETS = (("docker",), ("docker", "unikernel"), ("docker", "wasm"), ("unikernel",), ("docker", "vm"), ("wasm",))
ZONES = ("eu-central-1a", "eu-central-1b", "eu-central-1c")
SIZES = ((4, 16384), (8, 32768), (16, 65536), (32, 131072), (64, 262144))


class Fleet:
    """``count`` nodes with varied technologies, sizes, labels and a few inactive ones, numbered
    from ``offset`` (``<prefix>-<offset>``, ...): fleets with other prefixes or offsets run side by side."""

    def __init__(self, count: int, seed: int = 42, prefix: str = "node", offset: int = 0) -> None:
        self._rng = random.Random(seed)
        rng = self._rng
        self.base: list[NodeStatus] = []
        width = max(3, len(str(offset + count - 1)))
        for i in range(offset, offset + count):
            cores, mem = SIZES[rng.randrange(len(SIZES))]
            roll = rng.random()
            state = "active" if roll > 0.06 else ("draining" if roll > 0.03 else "down")
            self.base.append(
                NodeStatus(
                    node_id=f"{prefix}-{i:0{width}d}",
                    state=state,  # type: ignore[arg-type]
                    technologies=list(TECH_SETS[rng.randrange(len(TECH_SETS))]),
                    cpu_cores=float(cores),
                    cpu_free=float(cores),
                    memory_mb=mem,
                    memory_free_mb=mem,
                    gpus=2 if rng.random() < 0.1 else 0,
                    labels={"zone": ZONES[i % len(ZONES)], "rack": f"r{i % 16:02d}"},
                )
            )

    def __len__(self) -> int:
        return len(self.base)

    def status(self, i: int) -> NodeStatus:
        """A fresh status of node ``i``: background load varies a little from report to report."""
        b = self.base[i]
        used = self._rng.uniform(0.0, 0.3)
        return NodeStatus(
            node_id=b.node_id,
            state=b.state,
            technologies=b.technologies,
            cpu_cores=b.cpu_cores,
            cpu_free=round(b.cpu_cores * (1 - used), 2),
            memory_mb=b.memory_mb,
            memory_free_mb=int(b.memory_mb * (1 - used)),
            gpus=b.gpus,
            labels=b.labels,
        )

    def tick(self) -> list[NodeStatus]:
        """Fresh statuses of the whole fleet."""
        return [self.status(i) for i in range(len(self.base))]


def per_slice(count: int, interval: float, step: float) -> int:
    """Statuses to send every ``step`` seconds so each of ``count`` nodes reports once per
    ``interval``: real agents are not synchronised, so neither is the simulated fleet."""
    return max(1, math.ceil(count * step / interval)) if interval > 0 else count
