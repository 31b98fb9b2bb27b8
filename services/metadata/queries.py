"""The query endpoints: ``job.get``, ``job.list``, ``job.events``, ``node.list``.

Job records are folded from the recorded events when asked for (:func:`projector.fold_bodies`);
an outage of the database answers 503.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
from services.metadata.adapters import Database, is_unavailable
from services.metadata.projector import fold_bodies
from services.runtime.micro import RequestError

log = structlog.get_logger()

_status_decoder = msgspec.json.Decoder(ev.NodeStatus)
_enc = msgspec.json.Encoder()
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
        view = fold_bodies([(ref.job_id, body) for body in await self._db.job_events(ref.job_id)]).get(ref.job_id)
        record = domain.to_record(view) if view is not None else None
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
        views = fold_bodies(await self._db.events_of([job_id for _, job_id in page])) if page else {}
        jobs: list[JobRecord] = []
        for _, job_id in page:
            view = views.get(job_id)
            record = domain.to_record(view) if view is not None else None
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


__all__ = ["UNAVAILABLE", "Queries"]
