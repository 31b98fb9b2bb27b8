"""Node statuses into the node table: the NODES stream's snapshot at start, then live reports.

Statuses are state, not events: each node reports its whole state every few seconds,
so one lost while disconnected is superseded by the next, well within the TTL. Live
reports therefore come on a core subscription to ``node.status.*``, handed over straight
from the read loop (:mod:`services.runtime.direct`), rather than through JetStream.
A status already older than the TTL when it arrives is ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from schemas import events as ev
from schemas import subjects as s
from services.placement.ports import Clock
from services.placement.state import World
from services.runtime import direct
from services.runtime.delivery import stream_sequence

log = structlog.get_logger()

_node_decoder = msgspec.json.Decoder(ev.NodeStatus)


def absorb(world: World, data: bytes, wall: datetime, now: float, ttl: float) -> bool:
    """Apply one encoded node status to the table unless it is stale on arrival (``at``
    older than ``ttl`` on the wall clock ``wall``); ``now`` is the monotonic clock.
    Returns whether it was applied; raises ``msgspec.DecodeError`` on a bad payload."""
    status = _node_decoder.decode(data)
    at = status.at if status.at.tzinfo else status.at.replace(tzinfo=UTC)
    if (wall - at).total_seconds() > ttl:
        return False
    world.update_node(status, now)
    return True


async def last_per_node(
    js: JetStreamContext, subject: str, cb: Callable[[Msg], Awaitable[None]], done: asyncio.Event, timeout: float
) -> tuple[Any, bool]:
    """Subscribe ``cb`` to the last message of each ``subject`` in NODES, then to new ones (an
    ordered consumer), and wait at most ``timeout`` seconds for ``cb`` to set ``done``.
    Returns the subscription and whether ``done`` was set in time."""
    sub = await js.subscribe(
        subject,
        stream=s.NODES.name,
        ordered_consumer=True,
        cb=cb,
        deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
    )
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        return sub, False
    except BaseException:
        await sub.unsubscribe()
        raise
    return sub, True


class NodeFeed:
    """Keeps ``world``'s node table current and sets ``capacity_changed`` on every applied status."""

    def __init__(self, world: World, clock: Clock, ttl: float, capacity_changed: asyncio.Event) -> None:
        self.world = world
        self.clock = clock
        self.ttl = ttl
        self.capacity_changed = capacity_changed

    def on_status(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None = None) -> None:
        """One status, as a :data:`services.runtime.direct.Route`; a bad payload is logged and dropped."""
        clock = self.clock
        try:
            applied = absorb(self.world, data, clock.wall(), clock.monotonic(), self.ttl)
        except (msgspec.DecodeError, RecursionError) as e:  # msgspec recurses on deep nesting
            log.warning("bad node status ignored", subject=subject.decode(errors="replace"), error=repr(e)[:500])
            return
        if applied:
            self.capacity_changed.set()

    async def follow(self, nc: Client, js: JetStreamContext, timeout: float = 60) -> None:
        """Load the NODES stream's last status of each node, then follow the live ones.

        Subscribes to the live reports first and holds them in a buffer while the snapshot
        (an ordered consumer, up to the stream's last sequence at start) loads, then applies
        them: so an older snapshot entry never overwrites a newer report. Returns once live;
        after ``timeout`` it goes live with whatever loaded (the rest report again soon)."""
        buffered: list[tuple[bytes, bytes]] = []
        loading = True
        on_status = self.on_status

        def live(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            if loading:
                buffered.append((subject, data))
            else:
                on_status(subject, reply, data)

        await direct.subscribe(nc, s.NODE_STATUS_ALL, live)
        await nc.flush()  # subscribed before the snapshot's end is fixed
        state = (await js.stream_info(s.NODES.name)).state
        last = state.last_seq
        done = asyncio.Event()
        if not state.messages:  # nothing to load (the last sequence may be of a purged message)
            done.set()

        async def snapshot(msg: Msg) -> None:
            on_status(msg.subject.encode(), b"", msg.data)
            if stream_sequence(msg.reply) >= last:
                done.set()

        sub, complete = await last_per_node(js, s.NODE_STATUS_ALL, snapshot, done, timeout)
        await sub.unsubscribe()
        if not complete:  # go live all the same: the rest report again within their interval
            log.warning("node snapshot incomplete", timeout_s=timeout, nodes=len(self.world.nodes))
        for subject, data in buffered:
            on_status(subject, b"", data)
        loading = False
        log.info("node snapshot applied", nodes=len(self.world.nodes), live_while_loading=len(buffered))
        buffered.clear()
