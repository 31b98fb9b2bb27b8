"""Direct delivery: a subscription's messages handed to a plain function inside nats-py's read loop.

nats-py delivers every message by parsing its headers into a dict, building a ``Msg``,
putting it on the subscription's queue and waking the subscription's task, which then
awaits the callback: a noticeable share of a consumer's CPU per message. The inboxes
every job crosses (each consumer's standing pull, and the publish-ack inbox) need none of
that: their route is called synchronously with the raw parts of the message, as soon as
the parser has them.

This leans on nats-py's private parts (the per-message ``process_msg`` hook and a
subscription's sid), reached through :mod:`services.runtime.natspy` and checked by
``tests/integration/test_direct.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from nats.aio.client import Client

from services.runtime import natspy

log = structlog.get_logger()

Route = Callable[[bytes, bytes, bytes, bytes | None], None]
"""``route(subject, reply, data, raw_headers)``: must not block; raw headers are ``None`` when absent.
An exception it raises is logged (it must not reach nats-py's read loop, which it would end)."""


class _Router:
    __slots__ = ("_nc", "_original", "routes")

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.routes: dict[int, Route] = {}
        self._original = natspy.replace_process_msg(nc, self.process_msg)

    async def process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        route = self.routes.get(sid)
        if route is None:
            await self._original(sid, subject, reply, data, headers)
            return
        stats = self._nc.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        try:
            route(subject, reply, data, headers or None)
        except Exception:  # raised into the parser, it would end the connection's read loop
            log.exception("direct delivery: route failed", subject=subject.decode(errors="replace"))


def _router(nc: Client) -> _Router:
    """The connection's router, installed on first use (found again as the owner of its hook)."""
    router = getattr(natspy.process_msg(nc), "__self__", None)
    return router if isinstance(router, _Router) else _Router(nc)


async def subscribe(nc: Client, subject: str, route: Route) -> Any:
    """Subscribe ``subject`` with its messages going straight to ``route``; returns the
    nats-py subscription (``await sub.unsubscribe()`` ends it, and :func:`unroute` forgets it)."""
    router = _router(nc)
    sub = await nc.subscribe(subject)
    router.routes[natspy.subscription_id(sub)] = route
    return sub


async def unsubscribe(nc: Client, sub: Any) -> None:
    _router(nc).routes.pop(natspy.subscription_id(sub), None)
    await sub.unsubscribe()


def status_of(raw: bytes | None) -> tuple[str, dict[str, str]] | None:
    """``(status, headers)`` of a status message (``NATS/1.0 408 Request Timeout\r\nName: value...``),
    the description under ``Description`` as nats-py names it; ``None`` for a message without
    an inline status."""
    if not raw or not raw.startswith(b"NATS/1.0 "):
        return None
    first, *lines = raw.decode("utf-8", "replace").split("\r\n")
    _, status, *desc = first.split(" ", 2)
    headers = {"Description": desc[0].strip()} if desc else {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return status, headers
