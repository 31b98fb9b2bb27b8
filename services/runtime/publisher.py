"""Publishing events to JetStream: one message, several pipelined, or a chain with optimistic concurrency."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from schemas import events as ev
from schemas import subjects as s
from services.runtime import direct, natspy


class Ack(msgspec.Struct):
    """A JetStream publish ack (decoded once with msgspec, not json + dataclass)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _AckOrError(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(_AckOrError)
_WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_MSG_ID = 10070
_BATCH_HAS_DUPLICATE = 10201
_CONFLICTS = (_WRONG_LAST_SEQUENCE, WRONG_LAST_MSG_ID, _BATCH_HAS_DUPLICATE)
MAX_ATOMIC_BATCH = 1000
"""The most messages nats-server accepts in one atomic batch (its default ``max_batch_size``)."""


class PublishError(Exception):
    """JetStream refused to store a message."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{code}/{err_code}: {description}")
        self.code = code
        self.err_code = err_code
        self.description = description


class WrongLastSequence(PublishError):
    """The stream moved on since the publisher last looked (optimistic concurrency): its
    last sequence (10071) or last message id (10070) is not the expected one, or (10201) it
    already holds one of an atomic batch's messages, by its ``Nats-Msg-Id``."""

    @property
    def last_seq(self) -> int:
        """The stream's last sequence when the server said it, else 0 (unknown)."""
        tail = self.description.rsplit(":", 1)[-1].strip()
        return int(tail) if tail.isdigit() else 0


class Publisher:
    """Publishes events to JetStream with ``Nats-Msg-Id`` = ``event_id`` (a chain may name its own).

    ``publish`` waits for the stream's ack (on the same inbox: cheaper than nats-py's
    ``js.publish``, which builds a PubAck dataclass from ``json.loads``). ``publish_many`` pipelines the publishes
    and waits for every ack (raising the first error), so a caller acks its input only
    once its outputs are stored. ``publish_chain`` stores them with optimistic concurrency:
    in order right after ``expected_last_seq``, and nothing from the first refused one on.

    The pipelined forms use one wildcard inbox and a msgspec ack decoder rather than
    nats-py's ``publish_async``, whose future never completes when the server answers
    with an error (listed in :mod:`services.runtime.natspy` to re-verify on an upgrade).
    """

    def __init__(self, js: JetStreamContext, timeout: float = 5.0) -> None:
        self._js = js
        self._nc: Client = natspy.connection(js)
        self._timeout = timeout
        self._prefix = ""
        self._batch_prefix = ""
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._count = 0

    async def publish(self, event: ev.Event) -> Ack:
        """Store one event; raises :class:`PublishError` (or ``TimeoutError``) if it was not."""
        (result,) = await self._pipeline((event,))
        if isinstance(result, Exception):
            raise result
        return result

    async def publish_many(self, events: Sequence[ev.Event]) -> list[Ack]:
        results = await self._pipeline(events)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return [r for r in results if isinstance(r, Ack)]

    async def publish_chain(
        self,
        events: Sequence[ev.Event],
        expected_last_seq: int,
        *,
        atomic: bool = False,
        msg_ids: Sequence[str] | None = None,
    ) -> list[Ack | Exception]:
        """Store ``events`` in order right after ``expected_last_seq``, or from the first refused one
        on nothing; returns each message's ack or error (:class:`WrongLastSequence` for a refusal).

        Pipelined (default): message *i* expects the stream's last sequence to be
        ``expected_last_seq + i`` and, for *i* > 0, its last message id to be message *i - 1*'s.
        The sequence alone is not enough: after a foreign message, the message following our
        refused one would find exactly the sequence it expects and be stored, although it was
        decided on the same stale state.

        ``atomic``: one atomic batch (the stream must allow it, ``StreamSpec.atomic``), stored
        whole or not at all (its commit's ack carries the last sequence); for replicated streams,
        where the server may stop answering publishes after refusing a ``Nats-Expected-Last-Msg-Id``
        (docs/OPERATIONS.md, services/placement/README.md). It costs more: the server stages each
        batch in files it syncs (figures in services/placement/README.md).

        ``msg_ids``: each message's ``Nats-Msg-Id`` (default: its ``event_id``), which the
        pipelined chain's ``Nats-Expected-Last-Msg-Id`` names too. A caller whose chains may
        race another writer's copy of the same event (placement: two instances deciding one
        job) passes ids unique to its attempt, so the other copy can never satisfy our check;
        the ``event_id`` in the payload stays the consumers' idempotency key."""
        ids = [e.event_id for e in events] if msg_ids is None else list(msg_ids)
        if len(ids) != len(events):
            raise ValueError(f"{len(ids)} message ids for {len(events)} events")
        if not atomic:
            return await self._pipeline(events, expected_last_seq, ids)
        if not 0 < len(events) <= MAX_ATOMIC_BATCH:
            raise ValueError(f"a chain has 1 to {MAX_ATOMIC_BATCH} events, not {len(events)}")
        await self._subscribe()
        self._count += 1
        batch, reply = f"{self._batch_prefix}{self._count}", f"{self._prefix}{self._count}"
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[reply] = fut
        last = len(events) - 1
        for i, e in enumerate(events):
            headers = {s.MSG_ID_HEADER: ids[i], s.BATCH_ID_HEADER: batch, s.BATCH_SEQUENCE_HEADER: str(i + 1)}
            if i == 0:
                headers[s.EXPECTED_LAST_SEQ_HEADER] = str(expected_last_seq)
            if i == last:
                headers[s.BATCH_COMMIT_HEADER] = "1"
            await self._nc.publish(
                ev.commit_subject_of(e), ev.encode(e), reply=reply if i == last else "", headers=headers
            )
        try:
            data = await asyncio.wait_for(fut, self._timeout)
        except TimeoutError:
            return [TimeoutError("no JetStream ack in time")] * len(events)
        finally:
            self._pending.pop(reply, None)
        ack = _to_ack(data)
        if isinstance(ack, Exception):
            return [ack] * len(events)
        first = ack.seq - len(events) + 1
        return [Ack(stream=ack.stream, seq=first + i) for i in range(len(events))]

    async def _subscribe(self) -> None:
        if not self._prefix:
            self._prefix = self._nc.new_inbox() + "."
            self._batch_prefix = uuid.uuid4().hex + "-"
            await direct.subscribe(self._nc, self._prefix + "*", self._on_reply)

    async def _pipeline(
        self, events: Sequence[ev.Event], expected: int | None = None, msg_ids: Sequence[str] | None = None
    ) -> list[Ack | Exception]:
        await self._subscribe()
        loop = asyncio.get_running_loop()
        replies: list[str] = []
        futures: list[asyncio.Future[bytes]] = []
        for i, e in enumerate(events):
            self._count += 1
            reply = f"{self._prefix}{self._count}"
            fut: asyncio.Future[bytes] = loop.create_future()
            self._pending[reply] = fut
            replies.append(reply)
            futures.append(fut)
            msg_id = e.event_id if msg_ids is None else msg_ids[i]
            headers = {s.MSG_ID_HEADER: msg_id} if msg_id else {}
            if expected is not None:
                headers[s.EXPECTED_LAST_SEQ_HEADER] = str(expected + i)
                if i:
                    headers[s.EXPECTED_LAST_MSG_ID_HEADER] = (
                        events[i - 1].event_id if msg_ids is None else msg_ids[i - 1]
                    )
            await self._nc.publish(ev.commit_subject_of(e), ev.encode(e), reply=reply, headers=headers or None)
        if futures:
            await asyncio.wait(futures, timeout=self._timeout)
        out: list[Ack | Exception] = []
        for reply, fut in zip(replies, futures, strict=True):
            self._pending.pop(reply, None)
            if not fut.done():
                fut.cancel()
                out.append(TimeoutError("no JetStream ack in time"))
                continue
            out.append(_to_ack(fut.result()))
        return out

    def _on_reply(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        fut = self._pending.pop(subject.decode(), None)
        if fut is not None and not fut.done():
            fut.set_result(data)


def _to_ack(data: bytes) -> Ack | Exception:
    if not data:  # a status message: no stream listens on the subject
        return PublishError(503, 0, "no stream captures the subject (no responders)")
    try:
        a = _ack_decoder.decode(data)
    except msgspec.DecodeError as e:
        return PublishError(500, 0, f"undecodable ack: {e}")
    if a.error is not None:
        cls = WrongLastSequence if a.error.err_code in _CONFLICTS else PublishError
        return cls(a.error.code, a.error.err_code, a.error.description)
    return Ack(stream=a.stream, seq=a.seq, duplicate=a.duplicate)
