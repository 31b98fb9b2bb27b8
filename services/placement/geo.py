"""Geography (§8.5): great-circle distances and the coarse grid that indexes located nodes.

Pure. The node table keeps, per technology, one :class:`~services.placement.table.Bucket` per
grid cell of ``CELL_DEG`` degrees (nodes with a ``location`` only), so a ``constraints.near``
decision reads the few cells that can hold nodes within ``max_km`` instead of the whole
fleet. ``lower_bound_km`` never overestimates the distance from a point to any node of a
cell, so cells can be visited closest first for strategy ``nearest``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

EARTH_KM = 6371.0088
"""Mean Earth radius (IUGG)."""
CELL_DEG = 1.0
"""Grid cell size in degrees of latitude and longitude (about 111 km north-south)."""
_HALF_DIAG_KM = 80.0
"""An upper bound of the distance from a cell's centre to any point of it (a 1-degree cell's
half-diagonal is at most ~78.7 km, at the equator)."""
KM_PER_DEG = math.pi * EARTH_KM / 180

Cell = tuple[int, int]


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(a)))


def cell_of(lat: float, lon: float) -> Cell:
    return (math.floor(lat / CELL_DEG), math.floor(((lon + 180) % 360 - 180) / CELL_DEG))


def lower_bound_km(lat: float, lon: float, cell: Cell) -> float:
    """At most the distance from ``(lat, lon)`` to any point of ``cell``."""
    clat = (cell[0] + 0.5) * CELL_DEG
    clon = (cell[1] + 0.5) * CELL_DEG
    return max(0.0, distance_km(lat, lon, clat, clon) - _HALF_DIAG_KM * CELL_DEG)


def box(lat: float, lon: float, max_km: float) -> Iterable[Cell] | None:
    """The cells of the lat/lon box around a circle of ``max_km``; None when it spans every
    longitude (near a pole, or a radius of thousands of km)."""
    dlat = max_km / KM_PER_DEG
    lo, hi = lat - dlat, lat + dlat
    if lo <= -89.0 or hi >= 89.0:
        return None
    dlon = dlat / math.cos(math.radians(max(abs(lo), abs(hi))))
    if dlon >= 179.0:
        return None
    rows = range(math.floor(lo / CELL_DEG), math.floor(hi / CELL_DEG) + 1)
    first = math.floor((lon - dlon) / CELL_DEG)
    last = math.floor((lon + dlon) / CELL_DEG)
    width = round(360 / CELL_DEG)
    half = width // 2
    cols = [(c + half) % width - half for c in range(first, last + 1)]
    return [(r, c) for r in rows for c in cols]


def box_size(lat: float, lon: float, max_km: float) -> int:
    """How many cells :func:`box` lists (a large number when it spans every longitude)."""
    b = box(lat, lon, max_km)
    return 1 << 30 if b is None else len(b)  # type: ignore[arg-type]
