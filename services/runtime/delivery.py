"""One delivered JetStream message: its explicit outcome, guarded against double acks.

:func:`outcome` is the delivery policy of every consumer, a pure function: what to do
with a message whose handler returned, raised, or raised :class:`Poison`.
"""

from __future__ import annotations

from nats.aio.msg import Msg

from services.runtime.backoff import delay


class Poison(Exception):
    """A message that will never succeed: dead-letter it instead of retrying."""


class Delivery:
    """One delivered message; guards against double acks."""

    __slots__ = ("_done", "_held", "msg")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self._done = False
        self._held = False

    @property
    def num_delivered(self) -> int:
        return int(self.msg.metadata.num_delivered or 1)

    def hold(self) -> None:
        """Take over acking: the loop will not ack this message when the handler returns."""
        self._held = True

    @property
    def done(self) -> bool:
        return self._done

    async def ack(self) -> None:
        if not self._done:
            self._done = True
            await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        if not self._done:
            self._done = True
            await self.msg.nak(delay=delay)

    async def term(self) -> None:
        if not self._done:
            self._done = True
            await self.msg.term()

    async def in_progress(self) -> None:
        if not self._done:
            await self.msg.in_progress()


def retry_delay(num_delivered: int) -> float:
    """The nak delay after the ``num_delivered``-th failed delivery: 0.5 s doubling up to 30 s."""
    return delay(num_delivered, base=0.5, cap=30.0)


def stream_sequence(reply: str) -> int:
    """The stream sequence of a JetStream delivery, read from its ack subject (ADR-15:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...``, or the 12-token form with domain and
    account hash) without building nats-py's ``Msg.metadata`` (a dataclass and a datetime per
    message), for loops that read every message of a stream."""
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])
