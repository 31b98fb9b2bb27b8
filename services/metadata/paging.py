"""Pages bounded by bytes: list replies that always fit in one NATS message.

A list reply is built item by item: each item is encoded on its own (msgspec encodes a
job record in a few µs) and added while the page stays within its byte budget; the first
item that would cross it ends the page, and the cursor then continues right after the
last item included. So a page holds at most ``limit`` items *and* at most
``page_bytes``, whatever was asked, and a caller follows ``next`` for the rest.

The budget comes from the connection's ``max_payload`` (the server's limit for a whole
message, headers included): half of it, at most 512 KiB, leaving ample room for the reply
envelope and any headers. One item alone is always sent (so a page always makes progress)
as long as it fits under ``max_payload`` minus a margin; one that does not is a 413.
"""

from __future__ import annotations

import msgspec

from services.runtime.micro import RequestError

PAGE_BYTES = 512 * 1024
"""The byte budget of a page's items on a server with the default 1 MiB ``max_payload``."""
ENVELOPE_BYTES = 4096
"""Room kept for the reply around the items: ``{"nodes":[...],"next":<cursor>,"count":n}`` and headers."""

_enc = msgspec.json.Encoder()


class Budget(msgspec.Struct, frozen=True):
    page_bytes: int
    """Items stop before their encoded size (with separators) would exceed this."""
    item_bytes: int
    """The largest single item that can still be sent (alone on its page)."""

    @classmethod
    def for_max_payload(cls, max_payload: int) -> Budget:
        """Half of ``max_payload`` (at most :data:`PAGE_BYTES`) for a page; the rest is margin."""
        return cls(
            page_bytes=max(1024, min(PAGE_BYTES, max_payload // 2)),
            item_bytes=max(1024, max_payload - ENVELOPE_BYTES),
        )


class Page:
    """Encoded items of one reply, added while they fit."""

    def __init__(self, budget: Budget, limit: int) -> None:
        self._budget = budget
        self._limit = limit
        self.items: list[bytes] = []
        self.size = 0
        self.full = False
        """Set when an item was refused (the budget or the limit is reached): there is more to page."""

    def add(self, item: bytes, *, what: str) -> bool:
        """Add ``item`` if the page has room for it; False (and :attr:`full`) if not."""
        n = len(item) + 1
        if len(self.items) >= self._limit or (self.items and self.size + n > self._budget.page_bytes):
            self.full = True
            return False
        if n > self._budget.item_bytes:
            raise RequestError(413, f"{what} is {len(item)} bytes, more than a reply can carry")
        self.items.append(item)
        self.size += n
        return True

    def reply(self, field: str, next_cursor: str | None) -> bytes:
        """``{"<field>": [items], "next": cursor or null, "count": n}``."""
        return b"".join(
            (
                b'{"',
                field.encode(),
                b'":[',
                b",".join(self.items),
                b'],"next":',
                _enc.encode(next_cursor),
                b',"count":',
                str(len(self.items)).encode(),
                b"}",
            )
        )


__all__ = ["ENVELOPE_BYTES", "PAGE_BYTES", "Budget", "Page"]
