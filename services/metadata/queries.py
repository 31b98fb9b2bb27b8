"""The query endpoints: ``job.get``, ``job.list``, ``job.events``, ``node.list``.

Job records are folded from the recorded events when asked for (:func:`views.fold_bodies`);
an outage of the database answers 503.

Tenants (§8.4): a request from a tenant's account (``tenant_of``) sees only its own jobs: another
tenant's job is a 404 with the unknown job's message (its existence is not revealed), and
``job.list`` lists its own whatever its ``tenant`` says. Inside the scheduler's account every
job is visible and ``job.list`` filters by ``tenant`` when asked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar, get_args

import msgspec
import structlog
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from schemas.replies import (
    Capacity,
    JobEventsRequest,
    JobRef,
    ListRequest,
    NodeFilterState,
    NodeListRequest,
    NodeRecord,
    NodeSummary,
    NodeSummaryReply,
    Reserved,
)
from services.metadata import cursors, domain, nodes
from services.metadata.adapters import Database, EventPosition, NodeListRow, NodeSummaryRow, is_unavailable
from services.metadata.paging import Budget, Page
from services.metadata.retention import forgotten_message
from services.metadata.views import fold_bodies
from services.runtime.micro import Endpoint, RequestError
from services.runtime.tenancy import tenant_of

log = structlog.get_logger()

_status_decoder = msgspec.json.Decoder(ev.NodeStatus)
_enc = msgspec.json.Encoder()
_job_ref = msgspec.json.Decoder(JobRef)
_list_req = msgspec.json.Decoder(ListRequest)
_node_list_req = msgspec.json.Decoder(NodeListRequest)
_events_req = msgspec.json.Decoder(JobEventsRequest)
T = TypeVar("T")

UNAVAILABLE = "the metadata store (PostgreSQL) is unavailable; retry later"


def _body(msg: Msg) -> bytes:
    """An empty body means ``{}`` (``nats req job.list ''``)."""
    return msg.data if msg.data.strip() else b"{}"


_FOLD_CHUNK = 100
"""Jobs whose events are read and folded at a time while a ``job.list`` page is filled."""


def _unknown_job(job_id: str, jobs_keep_s: float | None) -> RequestError:
    """The 404 of a job that does not exist, that the caller may not see (the same, on purpose), or
    that retention forgot (``jobs_keep_s`` after it ended)."""
    return RequestError(404, forgotten_message(job_id, jobs_keep_s), field="job_id", job_id=job_id)


def _cursor(decode: Callable[[str], T], cursor: str | None) -> T | None:
    try:
        return decode(cursor) if cursor is not None else None
    except cursors.BadCursor as e:
        raise RequestError(400, str(e), field="after") from None


class Queries:
    """``job.get``, ``job.list``, ``job.events``, ``node.list``; list replies are pages bounded by
    ``budget`` (see :mod:`services.metadata.paging`)."""

    def __init__(
        self,
        db: Database,
        node_ttl_s: float,
        budget: Budget | None = None,
        *,
        jobs_keep_s: float | None = None,
        node_flush_s: float = 0.0,
    ) -> None:
        self._db = db
        self._jobs_keep_s = jobs_keep_s
        """Retention's window (None: the 404 says "unknown job" only)."""
        self._node_ttl_s = node_ttl_s + node_flush_s
        """A node is inactive once its stored status is older than the TTL plus the flush period: the
        stored one may be up to ``node_flush_s`` behind its last report (:mod:`services.metadata.fleet`)."""
        self._budget = budget or Budget.for_max_payload(1024 * 1024)

    async def job_get(self, msg: Msg) -> bytes:
        caller = tenant_of(msg)
        ref = _job_ref.decode(msg.data)
        view = fold_bodies([(ref.job_id, body) for body in await self._db.job_events(ref.job_id)]).get(ref.job_id)
        record = domain.to_record(view) if view is not None and domain.visible(view.tenant, caller) else None
        if record is None:
            raise _unknown_job(ref.job_id, self._jobs_keep_s)
        body = _enc.encode(record)
        if len(body) > self._budget.item_bytes:
            raise RequestError(413, f"the record of job {ref.job_id} is {len(body)} bytes, more than a reply can carry")
        return body

    async def job_list(self, msg: Msg) -> bytes:
        """Full records, newest first, until ``limit`` or the byte budget; ``next`` follows the last one."""
        caller = tenant_of(msg)
        req = _list_req.decode(_body(msg))
        before = _cursor(cursors.decode_cursor, req.after)
        rows = await self._db.list_jobs(req.state, before, req.limit + 1, domain.listed_tenant(caller, req.tenant))
        page = Page(self._budget, req.limit)
        last: int | None = None
        wanted = rows[: req.limit]
        for i in range(0, len(wanted), _FOLD_CHUNK):
            chunk = wanted[i : i + _FOLD_CHUNK]
            views = fold_bodies(await self._db.events_of([job_id for _, job_id in chunk]))
            for seq, job_id in chunk:
                view = views.get(job_id)
                record = domain.to_record(view) if view is not None else None
                if record is not None and not page.add(_enc.encode(record), what=f"the record of job {job_id}"):
                    break
                last = seq  # a job without a record yet is passed over, as before
            if page.full:
                break
        more = page.full or len(rows) > req.limit
        return page.reply("jobs", cursors.encode_cursor(last) if more and last is not None else None)

    async def job_events(self, msg: Msg) -> bytes:
        """The job's events as published, oldest first, paged like ``job.list``."""
        caller = tenant_of(msg)
        req = _events_req.decode(msg.data)
        after = _cursor(cursors.decode_event_cursor, req.after)
        if caller != s.DEFAULT_TENANT and not domain.visible(await self._db.job_tenant(req.job_id) or "", caller):
            raise _unknown_job(req.job_id, self._jobs_keep_s)
        rows = await self._db.job_events_page(req.job_id, after, req.limit + 1)
        if not rows and after is None:
            raise _unknown_job(req.job_id, self._jobs_keep_s)
        page = Page(self._budget, req.limit)
        last: EventPosition | None = None
        for row in rows[: req.limit]:
            if not page.add(row.body.encode(), what=f"event {row.position[2]} of job {req.job_id}"):
                break
            last = row.position
        more = page.full or len(rows) > req.limit
        return page.reply("events", cursors.encode_event_cursor(*last) if more and last is not None else None)

    async def node_list(self, msg: Msg) -> bytes:
        """A page of nodes in ``node_id`` order, or (``summary``) the matching fleet in one small reply."""
        req = _node_list_req.decode(_body(msg))
        after = _cursor(cursors.decode_node_cursor, req.after)
        labels = nodes.label_filter(req.label) if req.label is not None else None
        now = datetime.now(UTC)
        stale_before = now - timedelta(seconds=self._node_ttl_s)
        if req.summary:
            return _enc.encode(
                NodeSummaryReply(summary=_summary(await self._db.node_summary(req.state, labels, stale_before)))
            )
        rows = await self._db.node_page(after or "", req.state, labels, stale_before, req.limit + 1)
        page = Page(self._budget, req.limit)
        last: str | None = None
        for row in rows[: req.limit]:
            if not page.add(_enc.encode(self._node_record(row, now)), what=f"node {row.node_id}"):
                break
            last = row.node_id
        more = page.full or len(rows) > req.limit
        return page.reply("nodes", cursors.encode_node_cursor(last) if more and last is not None else None)

    def _node_record(self, row: NodeListRow, now: datetime) -> NodeRecord:
        st = _status_decoder.decode(row.status)
        return NodeRecord(
            node_id=st.node_id,
            state=st.state,
            active=nodes.node_active(st.state, st.at, now, self._node_ttl_s),
            at=st.at,
            technologies=st.technologies,
            labels=st.labels,
            cpu_cores=st.cpu_cores,
            cpu_free=st.cpu_free,
            memory_mb=st.memory_mb,
            memory_free_mb=st.memory_free_mb,
            gpus=st.gpus,
            reserved=Reserved(cpu=row.cpu, memory_mb=row.memory_mb, gpu=row.gpu, replicas=row.replicas),
            draining=row.draining or st.state == "draining",
        )

    def endpoints(self) -> list[Endpoint]:
        """The endpoint table, outages answered with 503."""
        return [
            Endpoint(name, subject, _unavailable_is_503(handler), meta)
            for name, subject, handler, meta in (
                ("get", s.JOB_GET, self.job_get, {"request": "{job_id}", "reply": "job record"}),
                (
                    "list",
                    s.JOB_LIST,
                    self.job_list,
                    {
                        "request": "{state?, limit? (1-1000, default 100), after?, tenant?}",
                        "reply": "{jobs, next, count} newest first, a page bounded by bytes",
                    },
                ),
                (
                    "events",
                    s.JOB_EVENTS,
                    self.job_events,
                    {
                        "request": "{job_id, limit? (1-1000, default 1000), after?}",
                        "reply": "{events, next, count} oldest first, a page bounded by bytes",
                    },
                ),
                (
                    "nodes",
                    s.NODE_LIST,
                    self.node_list,
                    {
                        "request": "{limit? (1-5000, default 500), after?, state?, label? (key=value), summary?}",
                        "reply": "{nodes, next, count} by node_id, a page bounded by bytes; or {summary}",
                    },
                ),
            )
        ]


def _summary(rows: list[NodeSummaryRow]) -> NodeSummary:
    """The per-state rows summed: counts of every state; capacity and free of the active nodes."""
    states = dict.fromkeys(get_args(NodeFilterState), 0)
    capacity, free, reserved = Capacity(), Capacity(), Reserved()
    for r in rows:
        states[r.listed] = states.get(r.listed, 0) + r.nodes
        reserved.cpu += r.reserved_cpu
        reserved.memory_mb += r.reserved_memory_mb
        reserved.gpu += r.reserved_gpu
        reserved.replicas += r.replicas
        if r.listed == "active":
            capacity = Capacity(cpu=r.cpu, memory_mb=r.memory_mb, gpu=r.gpu)
            free = Capacity(cpu=r.free_cpu, memory_mb=r.free_memory_mb, gpu=r.free_gpu)
    return NodeSummary(total=sum(states.values()), states=states, capacity=capacity, free=free, reserved=reserved)


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
