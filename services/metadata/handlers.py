"""Handlers: the projection of a batch of events, and the query endpoints.

The projection runs one transaction per fetched batch: record the events (their key
makes a redelivery a no-op), lock the touched jobs, merge the *new* events into their
views with the pure :func:`services.metadata.domain.apply`, write the views, the
reservations and the node statuses back; the consumer acks after the commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import msgspec
import structlog
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from schemas.replies import (
    JobEventsReply,
    JobListReply,
    JobRecord,
    JobRef,
    ListRequest,
    NodeListReply,
    NodeListRequest,
    NodeRecord,
    Reserved,
)
from services.metadata import domain
from services.metadata.adapters import (
    Database,
    EventRow,
    JobRow,
    NodeRow,
    ReservationRow,
    is_unavailable,
)
from services.runtime.consumer import Delivery
from services.runtime.micro import RequestError

log = structlog.get_logger()

_view_decoder = msgspec.json.Decoder(domain.JobView)
_status_decoder = msgspec.json.Decoder(ev.NodeStatus)
_enc = msgspec.json.Encoder()

DECODERS: dict[str, msgspec.json.Decoder[ev.Event]] = {
    s.JOBS.name: msgspec.json.Decoder(ev.JobEvents),
    s.PLACEMENTS.name: msgspec.json.Decoder(ev.PlacementEvents),
    s.CLUSTERS.name: msgspec.json.Decoder(ev.ClusterEvents),
    s.NODES.name: msgspec.json.Decoder(ev.NodeStatus),
}
"""How each projected stream's payloads decode (a payload of another type is poison)."""


def event_row(event: ev.Event, d: Delivery) -> EventRow:
    md = d.msg.metadata
    seq = md.sequence.stream if md.sequence else 0
    if isinstance(event, ev.NodeStatus):
        key, job_id, node_id = domain.node_event_key(event), None, event.node_id
    else:
        key, job_id, node_id = event.event_id, getattr(event, "job_id", None), None
    return EventRow(
        event_key=key,
        type=domain.event_type(event),
        job_id=job_id,
        node_id=node_id,
        at=event.at,
        stream=md.stream,
        stream_seq=seq,
        body=msgspec.Raw(d.msg.data),
    )


def job_row(view: domain.JobView) -> JobRow:
    d = domain.derive(view)
    return JobRow(
        job_id=view.job_id,
        state=d.state,
        reason=d.reason,
        submitted_at=view.submitted_at,
        updated_at=view.updated_at,
        released=view.released,
        view=msgspec.Raw(_enc.encode(view)),
    )


def reservation_rows(view: domain.JobView) -> list[ReservationRow]:
    return [
        ReservationRow(
            job_id=view.job_id,
            replica=replica,
            node_id=node_id,
            cpu=res.cpu if res else None,
            memory_mb=res.memory_mb if res else None,
            gpu=res.gpu if res else None,
        )
        for replica, node_id, res in domain.reservations(view)
    ]


Items = Sequence[tuple[ev.Event, Delivery]]


class Projector:
    """The batch handler of every metadata consumer.

    Batches of the four consumers that are ready at the same time are written together, in
    one transaction, by whichever caller holds the write lock (flat combining): a job's row
    is then locked and rewritten once for its events from every stream, and consumers never
    wait on each other's row locks. If a combined write fails with anything but an outage,
    each batch is retried on its own so that a poison message is only ever blamed on its
    own batch (whose consumer then isolates it).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self._waiting: list[tuple[Items, asyncio.Future[None]]] = []

    async def project(self, items: Items) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((items, fut))
        async with self._lock:
            if not fut.done():
                group, self._waiting = self._waiting, []
                await self._write_group(group)
        return fut.result()

    async def _write_group(self, group: list[tuple[Items, asyncio.Future[None]]]) -> None:
        try:
            await self.write([item for items, _ in group for item in items])
        except Exception as e:
            if len(group) == 1 or is_unavailable(e):
                for _, fut in group:
                    fut.set_exception(e)
                return
            for items, fut in group:
                try:
                    await self.write(items)
                except Exception as e2:
                    fut.set_exception(e2)
                else:
                    fut.set_result(None)
            return
        for _, fut in group:
            fut.set_result(None)

    async def write(self, items: Items) -> None:
        """Project ``items`` in one transaction."""
        rows: dict[str, tuple[EventRow, ev.Event]] = {}
        for event, d in items:
            row = event_row(event, d)
            rows.setdefault(row.event_key, (row, event))
        async with self._db.transaction() as tx:
            new = await tx.insert_events([r for r, _ in rows.values()])
            by_job: dict[str, list[ev.JobEvent]] = {}
            latest: dict[str, ev.NodeStatus] = {}
            for key in new:
                event = rows[key][1]
                if isinstance(event, ev.JobEvent):
                    by_job.setdefault(event.job_id, []).append(event)
                elif isinstance(event, ev.NodeStatus):
                    cur = latest.get(event.node_id)
                    if cur is None or event.at > cur.at:
                        latest[event.node_id] = event
            if by_job:
                stored = await tx.lock_jobs(list(by_job))
                views: list[domain.JobView] = []
                for job_id, events in by_job.items():
                    raw = stored.get(job_id)
                    view = _view_decoder.decode(raw) if raw else None
                    for event in events:
                        view = domain.apply(view, event)
                    assert view is not None
                    views.append(view)
                    log.debug("job projected", job_id=job_id, events=len(events))
                await tx.update_jobs([job_row(v) for v in views])
                reservations = [r for v in views for r in reservation_rows(v)]
                if reservations:
                    await tx.upsert_reservations(reservations)
            if latest:
                await tx.upsert_nodes(
                    [
                        NodeRow(
                            node_id=st.node_id, state=st.state, at=st.at, status=rows[domain.node_event_key(st)][0].body
                        )
                        for st in latest.values()
                    ]
                )
        log.debug("batch projected", events=len(items), new=len(new), jobs=len(by_job), nodes=len(latest))


# --- query endpoints ---------------------------------------------------------
_job_ref = msgspec.json.Decoder(JobRef)
_list_req = msgspec.json.Decoder(ListRequest)
_node_list_req = msgspec.json.Decoder(NodeListRequest)

UNAVAILABLE = "the metadata store (PostgreSQL) is unavailable; retry later"


def _body(msg: Msg) -> bytes:
    """An empty body means ``{}`` (``nats req job.list ''``)."""
    return msg.data if msg.data.strip() else b"{}"


class Queries:
    """``job.get``, ``job.list``, ``job.events``, ``node.list``."""

    def __init__(self, db: Database, node_ttl_s: float) -> None:
        self._db = db
        self._node_ttl_s = node_ttl_s

    async def job_get(self, msg: Msg) -> bytes:
        ref = _job_ref.decode(msg.data)
        raw = await self._db.get_job(ref.job_id)
        record = domain.to_record(_view_decoder.decode(raw)) if raw else None
        if record is None:
            raise RequestError(404, f"unknown job {ref.job_id}", field="job_id", job_id=ref.job_id)
        return _enc.encode(record)

    async def job_list(self, msg: Msg) -> bytes:
        req = _list_req.decode(_body(msg))
        try:
            before = domain.decode_cursor(req.after) if req.after is not None else None
        except domain.BadCursor as e:
            raise RequestError(400, str(e), field="after") from None
        rows = await self._db.list_jobs(req.state, before, req.limit + 1)
        page, more = rows[: req.limit], len(rows) > req.limit
        jobs: list[JobRecord] = []
        for _, raw in page:
            record = domain.to_record(_view_decoder.decode(raw))
            if record is not None:
                jobs.append(record)
        next_cursor = domain.encode_cursor(page[-1][0]) if more and page else None
        return _enc.encode(JobListReply(jobs=jobs, next=next_cursor))

    async def job_events(self, msg: Msg) -> bytes:
        ref = _job_ref.decode(msg.data)
        bodies = await self._db.job_events(ref.job_id)
        if not bodies:
            raise RequestError(404, f"unknown job {ref.job_id}", field="job_id", job_id=ref.job_id)
        return _enc.encode(JobEventsReply(events=[msgspec.Raw(b.encode()) for b in bodies]))

    async def node_list(self, msg: Msg) -> bytes:
        _node_list_req.decode(_body(msg))
        now = datetime.now(UTC)
        nodes: list[NodeRecord] = []
        for row in await self._db.nodes():
            st = _status_decoder.decode(row.status)
            nodes.append(
                NodeRecord(
                    node_id=st.node_id,
                    state=st.state,
                    active=domain.node_active(st.state, st.at, now, self._node_ttl_s),
                    at=st.at,
                    technologies=st.technologies,
                    labels=st.labels,
                    cpu_cores=st.cpu_cores,
                    cpu_free=st.cpu_free,
                    memory_mb=st.memory_mb,
                    memory_free_mb=st.memory_free_mb,
                    gpus=st.gpus,
                    reserved=Reserved(cpu=row.cpu, memory_mb=row.memory_mb, gpu=row.gpu, replicas=row.replicas),
                )
            )
        return _enc.encode(NodeListReply(nodes=nodes))

    def endpoints(self) -> list[tuple[str, str, Callable[[Msg], Awaitable[bytes]], dict[str, str]]]:
        """(name, subject, handler, metadata) of each endpoint, outages answered with 503."""
        return [
            (name, subject, _unavailable_is_503(handler), meta)
            for name, subject, handler, meta in (
                ("get", s.JOB_GET, self.job_get, {"request": "{job_id}", "reply": "job record"}),
                (
                    "list",
                    s.JOB_LIST,
                    self.job_list,
                    {"request": "{state?, limit? (1-1000, default 100), after?}", "reply": "{jobs, next}"},
                ),
                ("events", s.JOB_EVENTS, self.job_events, {"request": "{job_id}", "reply": "{events} oldest first"}),
                ("nodes", s.NODE_LIST, self.node_list, {"request": "{}", "reply": "{nodes}"}),
            )
        ]


def _unavailable_is_503(handler: Callable[[Msg], Awaitable[bytes]]) -> Callable[[Msg], Awaitable[bytes]]:
    async def guarded(msg: Msg) -> bytes:
        try:
            return await handler(msg)
        except Exception as e:
            if is_unavailable(e):
                log.warning("query failed: database unavailable", subject=msg.subject, error=repr(e))
                raise RequestError(503, UNAVAILABLE) from e
            raise

    return guarded


__all__ = ["DECODERS", "Projector", "Queries", "event_row"]
