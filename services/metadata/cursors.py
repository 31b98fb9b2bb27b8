"""The opaque ``next`` cursors of the listings (pure): ``job.list``, ``node.list``, ``job.events``.

Each is URL-safe base64 of a prefix naming the listing and the position of the last item
returned; a cursor of another listing, or not ours, raises :class:`BadCursor` (a 400).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from schemas import subjects as s

_JOB_CURSOR = b"j1:"
_NODE_CURSOR = b"n1:"
_EVENT_CURSOR = b"e1:"


class BadCursor(ValueError):
    pass


def _opaque(prefix: bytes, text: str) -> str:
    return base64.urlsafe_b64encode(prefix + text.encode()).decode().rstrip("=")


def _unwrap(prefix: bytes, cursor: str, what: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if raw.startswith(prefix):
            return raw[len(prefix) :].decode()
    except (binascii.Error, ValueError):
        pass
    raise BadCursor(f"not a cursor returned by {what}")


def encode_cursor(seq: int) -> str:
    """``job.list``'s ``next``: the listing position of the last job returned."""
    return _opaque(_JOB_CURSOR, str(seq))


def decode_cursor(cursor: str) -> int:
    """The listing position in a cursor made by :func:`encode_cursor`; raises BadCursor."""
    digits = _unwrap(_JOB_CURSOR, cursor, s.JOB_LIST)
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19 or int(digits) >= 2**63:
        raise BadCursor(f"not a cursor returned by {s.JOB_LIST}")
    return int(digits)


def encode_node_cursor(node_id: str) -> str:
    """``node.list``'s ``next``: the last node returned (pages are in ``node_id`` order)."""
    return _opaque(_NODE_CURSOR, node_id)


def decode_node_cursor(cursor: str) -> str:
    node_id = _unwrap(_NODE_CURSOR, cursor, s.NODE_LIST)
    if not node_id:
        raise BadCursor(f"not a cursor returned by {s.NODE_LIST}")
    return node_id


def encode_event_cursor(at: datetime, stream_seq: int, event_key: str) -> str:
    """``job.events``' ``next``: the position of the last event returned (``at, stream_seq, event_key``)."""
    return _opaque(_EVENT_CURSOR, f"{at.isoformat()}|{stream_seq}|{event_key}")


def decode_event_cursor(cursor: str) -> tuple[datetime, int, str]:
    at, _, rest = _unwrap(_EVENT_CURSOR, cursor, s.JOB_EVENTS).partition("|")
    seq, _, key = rest.partition("|")
    try:
        when = datetime.fromisoformat(at)
        if when.tzinfo is None or not seq.isdigit() or len(seq) > 19:
            raise ValueError(at)
    except ValueError:
        raise BadCursor(f"not a cursor returned by {s.JOB_EVENTS}") from None
    return when, int(seq), key


__all__ = [
    "BadCursor",
    "decode_cursor",
    "decode_event_cursor",
    "decode_node_cursor",
    "encode_cursor",
    "encode_event_cursor",
    "encode_node_cursor",
]
