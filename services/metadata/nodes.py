"""The node side of the projection (pure): keys of node facts, each node's newest drain fact in a group,
activity, label filters. (Statuses: :mod:`services.metadata.fleet`.)"""

from __future__ import annotations

from datetime import datetime, timedelta

from schemas import events as ev
from schemas import subjects as s
from services.metadata.sql_nodes import DrainRow


def node_event_key(fact: ev.NodeStatus | ev.NodeDraining) -> str:
    """Key of a node fact in the events table: its ``event_id``, else type, node and time.

    The same fact re-published (same node, same ``at``) is the same key, so it is
    recorded once; distinct facts of a node differ in ``at``.
    """
    kind = s.NODE_STATUS if isinstance(fact, ev.NodeStatus) else s.NODE_DRAINING
    return fact.event_id or f"{kind}:{fact.node_id}:{fact.at.isoformat()}"


class Latest:
    """The newest drain fact of each node among a group's events (by ``at``)."""

    def __init__(self) -> None:
        self._drains: dict[str, ev.NodeDraining] = {}

    def add(self, fact: ev.NodeDraining) -> None:
        old = self._drains.get(fact.node_id)
        if old is None or fact.at > old.at:
            self._drains[fact.node_id] = fact

    def drain_rows(self) -> list[DrainRow]:
        return [
            DrainRow(node_id=d.node_id, draining=d.draining, at=d.at, reason=d.reason) for d in self._drains.values()
        ]


def node_active(state: str, at: datetime, now: datetime, ttl_s: float) -> bool:
    """A node is active when it says so and its last status is younger than the TTL."""
    return state == "active" and now - at < timedelta(seconds=ttl_s)


def label_filter(label: str) -> dict[str, str]:
    """``key=value`` as ``{key: value}`` (the request's pattern guarantees the ``=``)."""
    key, _, value = label.partition("=")
    return {key: value}


__all__ = ["Latest", "label_filter", "node_active", "node_event_key"]
