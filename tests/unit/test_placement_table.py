"""The node table's handling of a status that says nothing new (issue #23): statuses are state,
so a repeat only refreshes the node's liveness, and never costs a re-index or a capacity epoch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from schemas.events import NodeStatus
from services.placement.state import World
from tests.support.events import node_status

TTL = 15.0


def status(node_id: str, cpu: float = 4.0, *, state: str = "active", at: int = 0) -> NodeStatus:
    """``node_id``'s status reported ``at`` seconds into the day, with ``cpu`` free."""
    st = node_status(node_id, datetime(2026, 11, 30, tzinfo=UTC) + timedelta(seconds=at), cpu_free=cpu)
    return msgspec.structs.replace(st, state=state, event_id=f"{node_id}-{at}")


def keys(w: World) -> list[tuple[float, int, str]]:
    bucket = w.bucket("docker", False)
    assert bucket is not None
    return list(bucket.by_free)


def test_a_repeated_status_refreshes_liveness_only() -> None:
    w = World()
    w.update_node(status("a", 4.0), 0.0)
    w.update_node(status("b", 6.0), 1.0)
    epoch, before = w.epoch, keys(w)
    w.update_node(status("a", 4.0, at=10), 10.0)  # same figures, later: a and b swap in liveness order
    assert w.epoch == epoch and keys(w) == before
    assert w.nodes["a"].status.at == status("a", at=10).at and w.nodes["a"].seen == 10.0
    assert w.expire(1.0 + TTL, TTL) == 1  # b is stale, a is not (its repeat counted as a report)
    assert keys(w) == [(-4.0, -16000, "a")]


def test_a_status_saying_something_new_moves_the_node_and_counts_as_a_change() -> None:
    w = World()
    w.update_node(status("a", 4.0), 0.0)
    w.update_node(status("b", 6.0), 0.0)
    epoch = w.epoch
    w.update_node(status("a", 7.0, at=5), 5.0)
    assert w.epoch == epoch + 1 and [k[2] for k in keys(w)] == ["a", "b"]
    w.update_node(msgspec.structs.replace(status("a", 7.0, at=6), labels={"zone": "b"}), 6.0)
    assert w.epoch == epoch + 2 and w.nodes["a"].status.labels == {"zone": "b"}
    w.update_node(status("a", 7.0, state="draining", at=7), 7.0)
    assert w.epoch == epoch + 3 and [k[2] for k in keys(w)] == ["b"]


def test_a_repeat_from_a_lost_or_expired_node_brings_it_back() -> None:
    w = World()
    w.update_node(status("a"), 0.0)
    assert w.find_lost(100.0, 30.0) == ["a"] and keys(w) == []
    w.update_node(status("a", at=100), 100.0)
    assert not w.nodes["a"].lost and [k[2] for k in keys(w)] == ["a"]
    assert w.expire(100.0 + TTL, TTL) == 1 and keys(w) == []
    epoch = w.epoch
    w.update_node(status("a", at=120), 120.0)
    assert [k[2] for k in keys(w)] == ["a"] and w.epoch == epoch + 1
