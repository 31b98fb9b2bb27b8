"""``node.drain`` / ``node.undrain``: stored ``node.draining`` facts, served and followed.

A request is answered once its fact is stored on ``node.draining.<node_id>`` (NODES keeps
the last one per node), and applied to this instance's table at once. Every instance
follows those facts (the last one per node at start, then live, on an ordered consumer:
they are rare), so every instance, and a restarted one, knows every drain. Facts are
applied in stream order per node (a fact older than the one applied is ignored), so a
drain and an undrain racing through two instances end as the stream stored them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import events as ev
from schemas import subjects as s
from schemas.replies import NodeDrainReply, NodeDrainRequest, NodeUndrainRequest
from services.placement.nodes import last_per_node
from services.placement.state import World
from services.runtime.delivery import stream_sequence
from services.runtime.micro import RequestError
from services.runtime.publisher import Ack

log = structlog.get_logger()

_drain = msgspec.json.Decoder(NodeDrainRequest)
_undrain = msgspec.json.Decoder(NodeUndrainRequest)
_fact = msgspec.json.Decoder(ev.NodeDraining)
_enc = msgspec.json.Encoder()


class Drains:
    def __init__(self, world: World, publish: Callable[[ev.Event], Awaitable[Ack]], *wake: asyncio.Event) -> None:
        self.world = world
        self.publish = publish
        self.wake = wake
        """Set when a fact is applied: the fleet loop (replicas to move) and pending jobs (an
        undrained node has room again)."""
        self.applied: dict[str, int] = {}
        """node_id -> NODES sequence of the last fact applied."""

    def known(self, node_id: str) -> bool:
        w = self.world
        return node_id in w.nodes or node_id in self.applied or node_id in w.holders

    async def drain(self, msg: Msg) -> bytes:
        req = _drain.decode(msg.data)
        return await self._store(req.node_id, True, req.reason)

    async def undrain(self, msg: Msg) -> bytes:
        req = _undrain.decode(msg.data)
        return await self._store(req.node_id, False, None)

    async def _store(self, node_id: str, draining: bool, reason: str | None) -> bytes:
        if not self.known(node_id):
            raise RequestError(404, f"unknown node {node_id}", field="node_id")
        fact = ev.NodeDraining(
            event_id=f"{node_id}:{s.NODE_DRAINING}:{uuid.uuid4().hex}",
            node_id=node_id,
            draining=draining,
            reason=reason,
        )
        try:
            ack = await self.publish(fact)
        except Exception as e:  # the stream did not store it: nothing changed
            log.warning("drain fact not stored", node_id=node_id, error=repr(e))
            raise RequestError(503, f"the drain of {node_id} could not be stored: {e}") from e
        self.apply(ack.seq, fact)
        log.info("node drain stored", node_id=node_id, draining=draining, reason=reason)
        return _enc.encode(NodeDrainReply(node_id=node_id, draining=draining))

    def apply(self, seq: int, fact: ev.NodeDraining) -> None:
        """Apply a stored fact unless a later one of the same node was applied already."""
        if seq <= self.applied.get(fact.node_id, 0):
            return
        self.applied[fact.node_id] = seq
        self.world.set_drained(fact.node_id, fact.draining)
        for event in self.wake:
            event.set()

    async def follow(self, js: JetStreamContext, timeout: float = 60) -> object:
        """Apply the last fact of every node, then follow new ones; returns the subscription once
        the stored ones are applied (after ``timeout``, with whatever arrived)."""
        info = await js.stream_info(s.NODES.name, subjects_filter=s.NODE_DRAINING_ALL)
        done = asyncio.Event()
        if not info.state.subjects:
            done.set()

        async def on_message(msg: Msg) -> None:
            try:
                fact = _fact.decode(msg.data)
            except (msgspec.DecodeError, RecursionError) as e:  # msgspec recurses on deep nesting
                log.warning("bad node.draining fact ignored", subject=msg.subject, error=repr(e)[:500])
            else:
                self.apply(stream_sequence(msg.reply), fact)
            if msg.metadata.num_pending == 0:
                done.set()

        sub, complete = await last_per_node(js, s.NODE_DRAINING_ALL, on_message, done, timeout)
        if not complete:
            log.warning("drain facts incomplete", timeout_s=timeout, applied=len(self.applied))
        log.info("drain facts applied", nodes=len(self.applied), drained=len(self.world.drained))
        return sub
