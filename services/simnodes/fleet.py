"""A deterministic, varied fleet of simulated nodes (pure: no I/O)."""

from __future__ import annotations

import math
import random

from schemas.events import Location, NodeStatus

TECH_SETS = (("docker",), ("docker", "unikernel"), ("docker", "wasm"), ("unikernel",), ("docker", "vm"), ("wasm",))
ZONES = ("eu-central-1a", "eu-central-1b", "eu-central-1c")
CITIES = {
    "eu-central-1a": ((50.11, 8.68), (49.99, 8.25), (49.87, 8.65)),  # Frankfurt, Mainz, Darmstadt
    "eu-central-1b": ((52.52, 13.40), (51.34, 12.37), (53.55, 9.99)),  # Berlin, Leipzig, Hamburg
    "eu-central-1c": ((48.14, 11.58), (48.78, 9.18), (49.45, 11.08)),  # Munich, Stuttgart, Nuremberg
}
"""A few cities per zone: each node sits near one of its zone's, within ~15 km (§8.5 ``location``)."""
JITTER_DEG = 0.1
SIZES = ((4, 16384), (8, 32768), (16, 65536), (32, 131072), (64, 262144))


class Fleet:
    """``count`` nodes with varied technologies, sizes, labels and a few inactive ones, numbered
    from ``offset`` (``<prefix>-<offset>``, ...): fleets with other prefixes or offsets run side by side."""

    def __init__(self, count: int, seed: int = 42, prefix: str = "node", offset: int = 0, churn: float = 1.0) -> None:
        self._rng = random.Random(seed)
        self.churn = churn
        """The chance that a node's background load changed since its last report (1: every report
        says new free figures; 0: an idle node repeats itself, as agents reporting allocatable do)."""
        self._used: list[float | None] = [None] * count
        rng = self._rng
        where = random.Random(seed + 1)  # locations from their own stream: sizes etc. stay as they were
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
                    location=_near(where, CITIES[ZONES[i % len(ZONES)]]),
                )
            )

    def __len__(self) -> int:
        return len(self.base)

    def status(self, i: int) -> NodeStatus:
        """A fresh status of node ``i``: background load varies a little from report to report
        (with chance ``churn``; otherwise the node reports the same figures as last time)."""
        b = self.base[i]
        used = self._used[i]
        if used is None or self.churn >= 1.0 or self._rng.random() < self.churn:
            used = self._used[i] = self._rng.uniform(0.0, 0.3)
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
            location=b.location,
        )

    def tick(self) -> list[NodeStatus]:
        """Fresh statuses of the whole fleet."""
        return [self.status(i) for i in range(len(self.base))]


def _near(rng: random.Random, cities: tuple[tuple[float, float], ...]) -> Location:
    lat, lon = cities[rng.randrange(len(cities))]
    dlat, dlon = rng.uniform(-JITTER_DEG, JITTER_DEG), rng.uniform(-JITTER_DEG, JITTER_DEG)
    return Location(lat=round(lat + dlat, 4), lon=round(lon + dlon, 4))


def per_slice(count: int, interval: float, step: float) -> int:
    """Statuses to send every ``step`` seconds so each of ``count`` nodes reports once per
    ``interval``: real agents are not synchronised, so neither is the simulated fleet."""
    return max(1, math.ceil(count * step / interval)) if interval > 0 else count
