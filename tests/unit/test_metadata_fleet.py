"""Node statuses as state (issue #23), without a server: the coalescing store, decoding a flush, the
history-due decision and its marks, and a flush against a fake writer (not the writer, outage,
a row PostgreSQL refuses)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from services.metadata import fleet as fleet_module
from services.metadata.fleet import (
    Coalescer,
    Decoded,
    Fleet,
    HistoryMarks,
    Mark,
    Status,
    decode_into,
    history_due,
    signature,
)
from services.metadata.queries import Queries
from services.metadata.sql_nodes import HISTORY_EVERY_S, NodeListRow, NodeRow, NodeSummaryRow
from tests.support.events import node_status

T0 = datetime(2025, 6, 1, tzinfo=UTC)


def subject(node_id: str) -> bytes:
    return s.node_status_subject(node_id).encode()


def put(store: Coalescer, status: ev.NodeStatus) -> None:
    store.put(subject(status.node_id), b"", ev.encode(status))


def decoded(*payloads: bytes) -> Decoded:
    out = Decoded()
    decode_into(out, payloads)
    return out


def test_the_store_keeps_the_newest_arrival_per_subject_and_swaps() -> None:
    store = Coalescer()
    put(store, node_status("n1", T0, cpu_free=1.0))
    put(store, node_status("n1", T0 - timedelta(seconds=5), cpu_free=2.0))  # arrives last: it wins here
    put(store, node_status("n2", T0))
    assert len(store) == 2
    taken = store.take()
    assert len(store) == 0 and store.take() == {}
    assert msgspec.json.decode(taken[subject("n1")])["cpu_free"] == 2.0
    # a failed flush puts back what it took, but a subject that reported again keeps its newer payload
    put(store, node_status("n2", T0 + timedelta(seconds=5), cpu_free=7.0))
    store.restore(taken)
    again = store.take()
    assert sorted(again) == [subject("n1"), subject("n2")]
    assert msgspec.json.decode(again[subject("n2")])["cpu_free"] == 7.0


def test_decoding_keeps_the_newest_per_node_and_counts_bad_payloads() -> None:
    older, newer = node_status("n1", T0), node_status("n1", T0 + timedelta(seconds=1), cpu_free=3.0)
    nul = ev.NodeStatus(**{**msgspec.structs.asdict(node_status("n3", T0)), "labels": {"zone": "a\x00"}})
    out = decoded(
        ev.encode(newer), ev.encode(older), b"{not json", b'{"type": "node.status"}', ev.encode(nul), ev.encode(older)
    )
    assert out.bad == 3 and out.error is not None
    assert list(out.statuses) == ["n1"]
    row = out.statuses["n1"].row
    assert (row.node_id, row.state, row.at) == ("n1", "active", newer.at)
    assert msgspec.json.decode(row.status, type=ev.NodeStatus) == newer  # re-encoded: the contract's fields


def test_a_time_without_offset_is_utc_and_unknown_fields_are_not_stored() -> None:
    body = msgspec.json.decode(ev.encode(node_status("n1", T0)))
    body["at"] = "2025-06-01T00:00:00"
    body["extra"] = "ignored"
    out = decoded(msgspec.json.encode(body))
    row = out.statuses["n1"].row
    assert row.at == T0 and row.at.tzinfo is not None
    assert b"extra" not in bytes(row.status)


def test_the_signature_ignores_time_and_event_id_only() -> None:
    a = node_status("n1", T0)
    assert signature(a) == signature(msgspec.structs.replace(a, at=T0 + timedelta(hours=1), event_id="x"))
    assert signature(a) != signature(msgspec.structs.replace(a, cpu_free=1.0))
    assert signature(a) != signature(msgspec.structs.replace(a, state="draining"))
    assert signature(a) != signature(msgspec.structs.replace(a, labels={"zone": "b"}))


def test_history_is_due_when_none_or_old_enough_and_changed() -> None:
    every = timedelta(seconds=HISTORY_EVERY_S)
    assert history_due(None, T0, 1)
    mark = Mark(at=T0, sig=1, seen=0)
    assert not history_due(mark, T0 + every - timedelta(seconds=1), 2)  # changed, but too soon
    assert not history_due(mark, T0 + every, 1)  # old enough, unchanged
    assert history_due(mark, T0 + every, 2)  # old enough and changed
    unknown = Mark(at=T0, sig=None, seen=0)
    assert not history_due(unknown, T0 + timedelta(seconds=1), 1)
    assert history_due(unknown, T0 + every, 1)  # content unknown: offered again, the SQL decides


def status(node_id: str, at: datetime, cpu_free: float = 8.0) -> Status:
    out = decoded(ev.encode(node_status(node_id, at, cpu_free=cpu_free)))
    return out.statuses[node_id]


def test_marks_learn_from_what_was_written_and_what_was_refused() -> None:
    marks = HistoryMarks()
    first = [status("n1", T0), status("n2", T0)]
    assert marks.due(first) == first
    marks.written(first, inserted={"n1"})  # n2 refused: the database has a recent or equal row
    assert marks.marks["n1"].sig == first[0].sig and marks.marks["n2"].sig is None
    later = T0 + timedelta(seconds=HISTORY_EVERY_S)
    same = [status("n1", later), status("n2", later)]
    assert marks.due(same) == [same[1]]  # n1 unchanged; n2 unknown, so offered again
    marks.written([same[1]], inserted=set())  # refused again: the stored content is this one
    assert marks.marks["n2"].sig == same[1].sig
    much_later = later + timedelta(seconds=HISTORY_EVERY_S)
    assert marks.due([status("n2", much_later)]) == []
    changed = status("n2", much_later, cpu_free=1.0)
    assert marks.due([changed]) == [changed]


def test_marks_of_nodes_gone_for_long_are_forgotten() -> None:
    marks = HistoryMarks()
    marks.written(marks.due([status("n1", T0), status("n2", T0)]), inserted={"n1", "n2"})
    for i in range(1, 5):
        marks.due([status("n1", T0 + timedelta(seconds=i))])
    assert marks.forget_absent(3) == 1 and sorted(marks.marks) == ["n1"]


class FakeWriter:
    def __init__(self) -> None:
        self.calls: list[tuple[list[NodeRow], list[NodeRow]]] = []
        self.writer = True
        self.outage = False
        self.refuse: set[str] = set()

    async def write(self, statuses: Sequence[NodeRow], history: Sequence[NodeRow]) -> set[str] | None:
        if self.outage:
            raise OSError("connection refused")
        if not self.writer:
            return None
        if any(r.node_id in self.refuse for r in statuses):
            raise asyncpg.exceptions.DataError("refused")
        self.calls.append((list(statuses), list(history)))
        return {r.node_id for r in history}

    async def close(self) -> None:
        pass


async def test_a_flush_writes_each_node_once_and_history_only_when_due() -> None:
    w = FakeWriter()
    fleet = Fleet(w, flush_s=10.0)
    for i in range(50):
        put(fleet.store, node_status("n1", T0 + timedelta(seconds=i), cpu_free=float(i % 8)))
    put(fleet.store, node_status("n2", T0))
    fleet.store.put(subject("n3"), b"", b"garbage")
    assert await fleet.flush() == 2
    (rows, history), *_ = w.calls
    assert sorted((r.node_id, r.at) for r in rows) == [("n1", T0 + timedelta(seconds=49)), ("n2", T0)]
    assert len(history) == 2
    assert fleet.stats["rows"] == 2 and fleet.stats["bad"] == 1 and fleet.stats["history"] == 2
    put(fleet.store, node_status("n1", T0 + timedelta(seconds=50), cpu_free=1.0))  # changed, but too soon
    assert await fleet.flush() == 1
    assert w.calls[1][1] == []
    assert await fleet.flush() == 0 and len(w.calls) == 2  # nothing arrived: nothing written


async def test_another_writer_means_ours_are_dropped_and_an_outage_keeps_them() -> None:
    w = FakeWriter()
    fleet = Fleet(w, flush_s=10.0)
    w.writer = False
    put(fleet.store, node_status("n1", T0))
    assert await fleet.flush() is None
    assert fleet.stats["dropped"] == 1 and len(fleet.store) == 0 and fleet.marks.marks == {}
    w.writer, w.outage = True, True
    put(fleet.store, node_status("n1", T0 + timedelta(seconds=1)))
    put(fleet.store, node_status("n2", T0))
    with pytest.raises(OSError):
        await fleet.flush()
    put(fleet.store, node_status("n2", T0 + timedelta(seconds=2)))  # newer than the one held back
    w.outage = False
    assert await fleet.flush() == 2
    assert sorted((r.node_id, r.at) for r in w.calls[0][0]) == [
        ("n1", T0 + timedelta(seconds=1)),
        ("n2", T0 + timedelta(seconds=2)),
    ]


async def test_a_big_flush_is_written_in_chunks_and_an_outage_keeps_only_what_was_not_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fleet_module, "WRITE_CHUNK", 2)
    w = FakeWriter()
    fleet = Fleet(w, flush_s=0.01)
    for i in range(5):
        put(fleet.store, node_status(f"n{i}", T0))
    assert await fleet.flush(spread=True) == 5
    assert [len(rows) for rows, _ in w.calls] == [2, 2, 1] and fleet.marks.flushes == 1
    assert fleet.stats["flushes"] == 1 and fleet.stats["rows"] == 5

    class OutageAtSecond(FakeWriter):
        async def write(self, statuses: Sequence[NodeRow], history: Sequence[NodeRow]) -> set[str] | None:
            self.outage = len(self.calls) == 1
            return await super().write(statuses, history)

    w = OutageAtSecond()
    fleet = Fleet(w, flush_s=0.01)
    for i in range(5):
        put(fleet.store, node_status(f"n{i}", T0))
    with pytest.raises(OSError):
        await fleet.flush()
    first = {r.node_id for r in w.calls[0][0]}
    assert len(first) == 2 and sorted(k.decode() for k in fleet.store.take()) == sorted(
        subject(f"n{i}").decode() for i in range(5) if f"n{i}" not in first
    )


async def test_a_row_postgresql_refuses_is_dropped_alone() -> None:
    w = FakeWriter()
    w.refuse = {"n3"}
    fleet = Fleet(w, flush_s=10.0)
    for i in range(7):
        put(fleet.store, node_status(f"n{i}", T0))
    assert await fleet.flush() == 7  # offered: the refused one is dropped, the others written
    written = sorted(r.node_id for rows, _ in w.calls for r in rows)
    assert written == ["n0", "n1", "n2", "n4", "n5", "n6"]


class StaleBefore:
    """The node queries of a database, recording the staleness threshold they were given."""

    def __init__(self) -> None:
        self.seen: list[datetime] = []

    async def node_page(
        self, after: str, state: object, labels: object, stale_before: datetime, limit: int
    ) -> list[NodeListRow]:
        self.seen.append(stale_before)
        return []

    async def node_summary(self, state: object, labels: object, stale_before: datetime) -> list[NodeSummaryRow]:
        self.seen.append(stale_before)
        return []


@pytest.mark.parametrize("summary", [False, True])
async def test_a_node_is_inactive_after_the_ttl_plus_the_flush_period(summary: bool) -> None:
    db = StaleBefore()
    queries = Queries(db, node_ttl_s=15.0, node_flush_s=10.0)  # type: ignore[arg-type]
    before = datetime.now(UTC)
    await queries.node_list(Msg(None, subject=s.NODE_LIST, data=msgspec.json.encode({"summary": summary})))  # type: ignore[arg-type]
    after = datetime.now(UTC)
    (stale_before,) = db.seen
    assert before - timedelta(seconds=25) <= stale_before <= after - timedelta(seconds=25)
