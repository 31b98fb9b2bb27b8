"""One delivered JetStream message: its explicit outcome, guarded against double acks.

:func:`outcome` is the delivery policy of every consumer, a pure function: what to do
with a message whose handler returned, raised, or raised :class:`Poison`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal

import structlog
from nats.aio.msg import Msg

from services.runtime.backoff import delay

log = structlog.get_logger()


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
    def held(self) -> bool:
        return self._held

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


async def quietly(op: Awaitable[None]) -> None:
    """An ack/nak/in-progress that cannot be sent (NATS reconnecting) just means a redelivery later."""
    try:
        await op
    except Exception as e:
        log.warning("ack-type reply not sent; the message will be redelivered", error=repr(e))


Action = Literal["ack", "hold", "nak", "dead_letter"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do with a delivered message: ``ack``; ``hold`` (the handler acks it later);
    ``nak`` after ``delay`` seconds; or ``dead_letter`` (``term`` plus a ``deadletter.<service>``
    event) with ``reason``."""

    action: Action
    delay: float | None = None
    reason: str = ""


ACK = Outcome("ack")
HOLD = Outcome("hold")


def outcome(
    error: BaseException | None, *, held: bool = False, num_delivered: int = 1, max_deliver: int = -1
) -> Outcome:
    """The delivery policy, written once for every consumer.

    - the handler returned (``error`` is None): ack, unless it held the message;
    - it raised :class:`Poison`: dead-letter with the error's text, at once;
    - any other error: nak with :func:`retry_delay`, until the ``max_deliver``-th delivery
      (when ``max_deliver`` > 0), which is dead-lettered instead of retried forever.

    ``num_delivered`` matters only for an error, so a loop need not read the message's
    metadata when its handler returned."""
    if error is None:
        return HOLD if held else ACK
    if isinstance(error, Poison):
        return Outcome("dead_letter", reason=str(error))
    if 0 < max_deliver <= num_delivered:
        return Outcome("dead_letter", reason=f"gave up after {num_delivered} deliveries: {error!r}")
    return Outcome("nak", delay=retry_delay(num_delivered))


def stream_sequence(reply: str) -> int:
    """The stream sequence of a JetStream delivery, read from its ack subject (ADR-15:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...``, or the 12-token form with domain and
    account hash) without building nats-py's ``Msg.metadata`` (a dataclass and a datetime per
    message), for loops that read every message of a stream."""
    return delivery_position(reply)[0]


def delivery_position(reply: str) -> tuple[int, str, int]:
    """``(stream sequence, consumer, consumer sequence)`` of a JetStream delivery, read from its ack
    subject like :func:`stream_sequence` (``...<consumer>.<delivered>.<sseq>.<cseq>...``)."""
    tokens = reply.split(".")
    at = 3 if len(tokens) == 9 else 5
    return int(tokens[at + 2]), tokens[at], int(tokens[at + 3])
