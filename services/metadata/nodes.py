"""The node side of the projection (pure): keys of node facts, the listed state, label filters."""

from __future__ import annotations

from datetime import datetime, timedelta

from schemas import events as ev
from schemas import subjects as s


def node_event_key(status: ev.NodeStatus) -> str:
    """Key of a node status in the events table: its ``event_id``, else node and time.

    The same status re-published (same node, same ``at``) is the same key, so it is
    recorded once; distinct statuses of a node differ in ``at``.
    """
    return status.event_id or f"{s.NODE_STATUS}:{status.node_id}:{status.at.isoformat()}"


def node_active(state: str, at: datetime, now: datetime, ttl_s: float) -> bool:
    """A node is active when it says so and its last status is younger than the TTL."""
    return state == "active" and now - at < timedelta(seconds=ttl_s)


def label_filter(label: str) -> dict[str, str]:
    """``key=value`` as ``{key: value}`` (the request's pattern guarantees the ``=``)."""
    key, _, value = label.partition("=")
    return {key: value}


__all__ = ["label_filter", "node_active", "node_event_key"]
