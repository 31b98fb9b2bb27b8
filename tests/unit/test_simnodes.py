"""The simulated fleet: deterministic nodes, reports spread over the interval."""

from __future__ import annotations

import pytest

from services.simnodes.fleet import Fleet, per_slice


@pytest.mark.parametrize(
    ("count", "interval", "step", "expected"),
    [(10_000, 5.0, 0.05, 100), (50, 3.0, 0.05, 1), (1, 5.0, 0.05, 1), (7, 0.0, 0.05, 7)],
)
def test_every_node_reports_at_least_once_per_interval(count: int, interval: float, step: float, expected: int) -> None:
    n = per_slice(count, interval, step)
    assert n == expected
    if interval:
        assert n * (interval / step) >= count


def test_fleet_is_deterministic_and_each_status_is_fresh_but_the_same_node() -> None:
    a, b = Fleet(20, seed=3), Fleet(20, seed=3)
    assert [x.node_id for x in a.tick()] == [x.node_id for x in b.tick()]
    s1, s2 = a.status(4), a.status(4)
    assert s1.node_id == s2.node_id == a.base[4].node_id and s1.technologies == a.base[4].technologies
    assert 0 < s1.cpu_free <= s1.cpu_cores and len(a) == 20


def test_a_second_fleet_with_an_offset_has_other_node_ids() -> None:
    first, second = Fleet(50), Fleet(5, seed=7, offset=50)
    assert [n.node_id for n in second.base] == [f"node-{i:03d}" for i in range(50, 55)]
    assert not {n.node_id for n in first.base} & {n.node_id for n in second.base}
    assert Fleet(2, offset=998).base[1].node_id == "node-999"


def test_churn_says_how_often_a_node_reports_new_free_figures() -> None:
    def changed(churn: float) -> int:
        fleet = Fleet(200, seed=5, churn=churn)
        first = fleet.tick()
        second = fleet.tick()
        pairs = zip(first, second, strict=True)
        return sum((a.cpu_free, a.memory_free_mb) != (b.cpu_free, b.memory_free_mb) for a, b in pairs)

    assert changed(0.0) == 0
    assert 5 <= changed(0.1) <= 40  # 20 expected of 200
    assert changed(1.0) >= 190  # a fresh draw each time (equal only by chance)
    assert [s.cpu_free for s in Fleet(30, seed=9).tick()] == [s.cpu_free for s in Fleet(30, seed=9, churn=1.0).tick()]
