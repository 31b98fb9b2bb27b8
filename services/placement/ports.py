"""What the decider needs from the outside world, as two small ports, and their real adapters.

- :class:`Chain` (publisher port): store a chain of decisions with optimistic concurrency
  and, when a refusal does not say where the stream is, ask for its last sequence.
- :class:`Clock`: the monotonic clock (deadlines, node freshness) and the wall clock
  (the age of a job, the age of a node's status).

Both are called as plain attributes on the hot path: the adapters hold the real
callables (a bound method, a builtin, a ``partial``) rather than wrapping them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from nats.js import JetStreamContext

from schemas import events as ev
from schemas import subjects as s
from services.runtime.publisher import Ack, Publisher


class Chain(Protocol):
    """The PLACEMENTS stream as the decider sees it."""

    async def publish_chain(
        self,
        events: Sequence[ev.Event],
        expected_last_seq: int,
        *,
        atomic: bool = False,
        msg_ids: Sequence[str] | None = None,
    ) -> list[Ack | Exception]:
        """As :meth:`services.runtime.publisher.Publisher.publish_chain`: each message's ack or
        error (``WrongLastSequence`` for a refusal), stored in order right after
        ``expected_last_seq`` and nothing from the first refused one on; ``msg_ids`` are the
        messages' ``Nats-Msg-Id`` (unique to this attempt), which the chain's checks name."""
        ...

    async def last_seq(self) -> int:
        """The stream's last sequence now."""
        ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> datetime:
        """Now, timezone-aware (UTC)."""
        ...


class SystemClock:
    """The process's clocks: ``time.monotonic`` and ``datetime.now(UTC)``."""

    __slots__ = ("monotonic", "wall")

    def __init__(self) -> None:
        self.monotonic: Callable[[], float] = time.monotonic
        self.wall: Callable[[], datetime] = partial(datetime.now, UTC)


class PlacementsStream:
    """:class:`Chain` on NATS: a :class:`Publisher`'s ``publish_chain`` and ``stream_info``."""

    __slots__ = ("_js", "publish_chain")

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.publish_chain = Publisher(js).publish_chain

    async def last_seq(self) -> int:
        return int((await self._js.stream_info(s.PLACEMENTS.name)).state.last_seq)
