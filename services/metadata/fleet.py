"""Node statuses into PostgreSQL as state, not events (issue #23): coalesced in memory, flushed periodically.

Every node reports its whole state every few seconds, so only the newest status of each node
matters. Statuses come on a core subscription to ``node.status.*`` handed over straight from
the read loop (:mod:`services.runtime.direct`, as placement takes them): the route keeps the
newest raw payload per subject in a dict, no decoding, O(1), bounded by the number of nodes.
Every ``[metadata] node_flush_s`` the dict is swapped out, each payload decoded once, and the
whole fleet written, :data:`WRITE_CHUNK` nodes a statement spread over half the period
(:class:`~services.metadata.adapters.FleetWriter`): each
node's current row (``nodes``, newest ``at`` wins) and, for the nodes :class:`HistoryMarks` says
are due, a downsampled ``node_history`` row. So PostgreSQL writes one row per node per flush,
whatever the reporting rate, and a history row only when a node changed and its last one is at
least a minute old.

Every metadata instance receives every status (a core subscription); the one holding the fleet
lock writes, the others drop what they swapped out. A status lost while disconnected is
superseded by the node's next one; nothing is loaded at start (the rows written before are in
PostgreSQL, and every live node reports again within its interval). Node figures in ``node.list``
are therefore up to ``node_flush_s`` behind the node's last report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import asyncpg
import msgspec
import structlog
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from services.metadata.adapters import is_unavailable
from services.metadata.sql_nodes import HISTORY_EVERY_S, NodeRow
from services.runtime import backoff, direct

log = structlog.get_logger()

_decoder = msgspec.json.Decoder(ev.NodeStatus)
_encoder = msgspec.json.Encoder()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

DECODE_CHUNK = 1000
"""Payloads decoded between two yields to the event loop during a flush."""
WRITE_CHUNK = 5000
"""Nodes written per statement: a flush of a bigger fleet is several statements (see ``SPREAD``)."""
SPREAD = 0.5
"""A periodic flush of several statements spaces them evenly over this share of ``flush_s``."""
LAST_FLUSH_S = 5.0
"""How long the flush at shutdown may take before it is abandoned."""
FORGET_AFTER_FLUSHES = 100
"""A node absent from this many flushes in a row loses its history mark (it left the fleet)."""


class Coalescer:
    """The newest raw payload of each subject, by arrival; :meth:`put` is a direct route."""

    __slots__ = ("_latest",)

    def __init__(self) -> None:
        self._latest: dict[bytes, bytes] = {}

    def put(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None = None) -> None:
        """One status, as a :data:`services.runtime.direct.Route`: replaces the subject's previous one."""
        self._latest[subject] = data

    def take(self) -> dict[bytes, bytes]:
        """Everything held since the last take; the store starts empty again."""
        out, self._latest = self._latest, {}
        return out

    def restore(self, taken: dict[bytes, bytes]) -> None:
        """Put back what a failed flush took, except subjects that reported again since (newer wins)."""
        latest = self._latest
        for subject, data in taken.items():
            latest.setdefault(subject, data)

    def __len__(self) -> int:
        return len(self._latest)


class Status(msgspec.Struct, frozen=True):
    """A decoded status ready to write: its row and the signature of its content but the time."""

    row: NodeRow
    sig: int


class Decoded(msgspec.Struct):
    """A flush's payloads decoded: the newest status of each node (by ``at``) and the bad ones."""

    statuses: dict[str, Status] = msgspec.field(default_factory=dict)
    bad: int = 0
    error: str | None = None
    """The first bad payload's error."""


def signature(status: ev.NodeStatus) -> int:
    """A node's content but its time and ``event_id`` (what the SQL guard compares), hashed."""
    return hash(_encoder.encode(msgspec.structs.replace(status, at=_EPOCH, event_id="")))


def _nul(status: ev.NodeStatus) -> bool:
    """Whether a free-text field holds a NUL, which PostgreSQL's text and jsonb refuse."""
    return "\x00" in status.event_id or any("\x00" in v for v in status.labels.values())


def decode_into(out: Decoded, payloads: Iterable[bytes]) -> None:
    """Decode ``payloads`` into ``out``: of each node the status with the newest ``at`` (several
    subjects may name one node), re-encoded (so what PostgreSQL gets is valid UTF-8 JSON of the
    contract's fields), ``at`` in UTC. A payload that does not decode, or holds a NUL, is counted."""
    statuses = out.statuses
    for data in payloads:
        try:
            status = _decoder.decode(data)
        except (msgspec.DecodeError, RecursionError) as e:  # msgspec recurses on deep nesting
            out.bad += 1
            out.error = out.error or repr(e)[:300]
            continue
        if _nul(status):
            out.bad += 1
            out.error = out.error or "a NUL character in a text field"
            continue
        if status.at.tzinfo is None:
            status = msgspec.structs.replace(status, at=status.at.replace(tzinfo=UTC))
        old = statuses.get(status.node_id)
        if old is not None and old.row.at >= status.at:
            continue
        statuses[status.node_id] = Status(row=NodeRow.of(status), sig=signature(status))


class Mark(msgspec.Struct):
    """What this instance knows of a node's last history row: its time and content signature (None:
    unknown, the SQL guard refused it without saying why), and the flush the node last reported in."""

    at: datetime
    sig: int | None
    seen: int


def history_due(mark: Mark | None, at: datetime, sig: int, every_s: float = HISTORY_EVERY_S) -> bool:
    """Whether a status at ``at`` with content ``sig`` is worth a history row: none known yet, or the
    last one at least ``every_s`` older and its content different (or unknown)."""
    if mark is None:
        return True
    if (at - mark.at).total_seconds() < every_s:
        return False
    return mark.sig is None or sig != mark.sig


class HistoryMarks:
    """Per node, when its last history row was written and with what content, so a flush sends only
    the nodes due for one. Empty after a restart (the SQL guard then decides once per node)."""

    def __init__(self, every_s: float = HISTORY_EVERY_S) -> None:
        self.every_s = every_s
        self.marks: dict[str, Mark] = {}
        self.flushes = 0

    def due(self, statuses: Iterable[Status], *, new_flush: bool = True) -> list[Status]:
        """The statuses due for a history row; marks every node seen in this flush (``new_flush``: the
        first part of a flush, which counts it; later parts of the same flush pass False)."""
        if new_flush:
            self.flushes += 1
        n, marks, every = self.flushes, self.marks, self.every_s
        out: list[Status] = []
        for st in statuses:
            mark = marks.get(st.row.node_id)
            if mark is not None:
                mark.seen = n
            if history_due(mark, st.row.at, st.sig, every):
                out.append(st)
        return out

    def written(self, sent: Sequence[Status], inserted: set[str]) -> None:
        """After a commit: ``sent`` were offered, ``inserted`` (node ids) got a row. A refused one had a
        recent or identical row already; the first refusal keeps its content unknown (it is offered
        again after ``every_s``), a later one takes it as the stored content."""
        marks, n = self.marks, self.flushes
        for st in sent:
            node_id = st.row.node_id
            known = marks.get(node_id)
            sig = st.sig if node_id in inserted or known is not None else None
            marks[node_id] = Mark(at=st.row.at, sig=sig, seen=n)

    def forget_absent(self, flushes: int = FORGET_AFTER_FLUSHES) -> int:
        """Drop the marks of nodes absent from the last ``flushes`` flushes; how many."""
        oldest = self.flushes - flushes
        gone = [node_id for node_id, m in self.marks.items() if m.seen < oldest]
        for node_id in gone:
            del self.marks[node_id]
        return len(gone)


class Writer(Protocol):
    """:class:`services.metadata.adapters.FleetWriter`'s interface."""

    async def write(self, statuses: Sequence[NodeRow], history: Sequence[NodeRow]) -> set[str] | None: ...

    async def close(self) -> None: ...


class Fleet:
    """The statuses of every node: coalesced by :attr:`store`, written every ``flush_s`` by :meth:`run`."""

    def __init__(self, writer: Writer, flush_s: float, marks: HistoryMarks | None = None) -> None:
        self.writer = writer
        self.flush_s = flush_s
        self.store = Coalescer()
        self.marks = marks or HistoryMarks()
        self._stop = asyncio.Event()
        self.stats = {"flushes": 0, "rows": 0, "history": 0, "bad": 0, "dropped": 0, "failed": 0}
        """Flushes written, node rows and history rows sent, bad payloads, rows dropped (another
        instance writes), flushes failed."""

    async def subscribe(self, nc: Client) -> None:
        """Start receiving statuses (flushed, so the server routes them to us once this returns). The
        subscription lasts as long as the connection (drained at stop)."""
        await direct.subscribe(nc, s.NODE_STATUS_ALL, self.store.put)
        await nc.flush()

    async def flush(self, *, spread: bool = False) -> int | None:
        """Write what arrived since the last flush; the number of nodes written, None if another instance
        writes (ours are dropped). An outage puts the statuses not yet written back (newer arrivals win)
        and raises; rows PostgreSQL refuses are isolated and dropped (logged), the others written.

        A big fleet is written :data:`WRITE_CHUNK` nodes per statement; with ``spread`` the statements
        are spaced evenly over :data:`SPREAD` of ``flush_s``, so that PostgreSQL and this service take
        their share of the machine a little at a time, instead of in one burst that would leave
        placement's view of the fleet a second or more behind (100,000 nodes: about 2 s of two
        processes' CPU at once)."""
        taken = self.store.take()
        if not taken:
            return 0
        items = list(taken.items())
        chunks = [items[i : i + WRITE_CHUNK] for i in range(0, len(items), WRITE_CHUNK)]
        pause = self.flush_s * SPREAD / len(chunks) if spread and len(chunks) > 1 else 0.0
        written = history_rows = 0
        for k, chunk in enumerate(chunks):
            if k and pause:
                await backoff.sleep_unless(self._stop, pause)  # at stop, the rest goes at once
            try:
                got = await self._flush_chunk([data for _, data in chunk], first=k == 0)
            except BaseException:
                self.store.restore(dict(x for c in chunks[k:] for x in c))
                raise
            if got is None:
                self.stats["dropped"] += sum(len(c) for c in chunks[k:])
                return None
            written += got[0]
            history_rows += got[1]
        if self.marks.flushes % FORGET_AFTER_FLUSHES == 0:
            self.marks.forget_absent()
        self.stats["flushes"] += 1
        log.debug("node statuses flushed", nodes=written, history=history_rows, received=len(taken))
        return written

    async def _flush_chunk(self, payloads: list[bytes], *, first: bool) -> tuple[int, int] | None:
        """Decode and write one chunk of a flush: (nodes written, history rows), None if another
        instance writes. ``first``: the flush's first chunk (it counts the flush in the history marks)."""
        decoded = Decoded()
        for i in range(0, len(payloads), DECODE_CHUNK):
            decode_into(decoded, payloads[i : i + DECODE_CHUNK])
            await asyncio.sleep(0)
        if decoded.bad:
            self.stats["bad"] += decoded.bad
            log.warning("bad node statuses ignored", count=decoded.bad, first_error=decoded.error)
        statuses = list(decoded.statuses.values())
        history = self.marks.due(statuses, new_flush=first)
        if not statuses:
            return 0, 0
        inserted = await self._write(statuses, history)
        if inserted is None:
            return None
        self.marks.written(history, inserted)
        self.stats["rows"] += len(statuses)
        self.stats["history"] += len(inserted)
        return len(statuses), len(inserted)

    async def _write(self, statuses: list[Status], history: list[Status]) -> set[str] | None:
        """Write, halving on a refused row (not an outage) until the culprits are alone and dropped."""
        try:
            return await self.writer.write([st.row for st in statuses], [st.row for st in history])
        except asyncpg.PostgresError as e:
            if is_unavailable(e):
                raise
            if len(statuses) == 1:
                log.warning(
                    "node status refused by PostgreSQL; dropped", node_id=statuses[0].row.node_id, error=repr(e)
                )
                return set()
        mid = len(statuses) // 2
        inserted: set[str] = set()
        for half in (statuses[:mid], statuses[mid:]):
            ids = {st.row.node_id for st in half}
            got = await self._write(half, [st for st in history if st.row.node_id in ids])
            if got is None:
                return None
            inserted |= got
        return inserted

    async def run(self, stop: asyncio.Event) -> None:
        """A flush every ``flush_s`` until ``stop``, then a last one (best effort); an outage or a bug
        skips a flush (logged), never ends the loop."""
        self._stop = stop
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.flush_s
        while not await backoff.sleep_unless(stop, max(0.0, next_at - loop.time())):
            next_at = max(next_at + self.flush_s, loop.time())  # a spread flush's time counts in its period
            await self._flush_logged(spread=True)
        try:
            await asyncio.wait_for(self._flush_logged(last=True), LAST_FLUSH_S)
        except TimeoutError:
            log.warning("last node status flush abandoned", timeout_s=LAST_FLUSH_S)

    async def _flush_logged(self, *, last: bool = False, spread: bool = False) -> None:
        try:
            await self.flush(spread=spread)
        except Exception as e:
            self.stats["failed"] += 1
            if is_unavailable(e):
                log.warning("node statuses not flushed: database unavailable", error=repr(e), held=len(self.store))
            else:
                log.exception("node status flush failed", last=last)
