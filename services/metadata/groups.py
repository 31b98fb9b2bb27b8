"""A group of batches prepared for one transaction of the projection, without I/O: the event rows
(each event once, whichever batch brought it), the jobs' views merged with their new events and the
rows they are written as, and the latest drain facts. Node statuses are not projected here: they
are state, coalesced and flushed by :mod:`services.metadata.fleet` (issue #23), and the NODES durable
reads drain facts only (one that still brings a status, configured before, has it skipped)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import msgspec

from schemas import events as ev
from schemas import subjects as s
from services.metadata import domain, nodes
from services.metadata.adapters import EventRecord, JobWrite
from services.metadata.sql_nodes import DrainRow
from services.metadata.views import Cached, job_write
from services.runtime.delivery import Delivery, stream_sequence

__all__ = ["Batch", "Group", "Items", "prepare"]

_STREAM_OF: dict[str, str] = {
    subject.removesuffix(".*"): stream.name
    for stream in (s.JOBS, s.PLACEMENTS, s.CLUSTERS, s.NODES)
    for subject in stream.subjects
}
"""The stream that stores each projected event type (``node.status.*`` holds type ``node.status``)."""

_YIELD_EVERY = 200
"""Jobs merged between two yields to the event loop while a group is prepared."""

Items = Sequence[tuple[ev.Event, Delivery]]


class Batch(msgspec.Struct):
    items: Items
    done: asyncio.Future[None]
    alone: bool = False
    """Retried on its own after a combined write failed (a poison message is blamed on its batch only)."""


class Group(msgspec.Struct, kw_only=True):
    """Batches prepared for one transaction: rows computed, nothing written yet."""

    batches: list[Batch]
    events: list[EventRecord] = msgspec.field(default_factory=list)
    by_job: dict[str, list[ev.JobEvent]] = msgspec.field(default_factory=dict)
    inserts: list[JobWrite] = msgspec.field(default_factory=list)
    updates: list[JobWrite] = msgspec.field(default_factory=list)
    results: dict[str, Cached] = msgspec.field(default_factory=dict)
    """The view and token of each written job, as they will be once committed."""
    drains: list[DrainRow] = msgspec.field(default_factory=list)


async def prepare(batches: list[Batch], base: Callable[[str], Cached | None]) -> Group:
    """Rows and views of a group, each job merged onto ``base(job_id)`` (the view it is known to have,
    or None). It yields to the event loop every few hundred events, so a write in flight gets its next
    statement sent promptly instead of after the whole preparation."""
    g = Group(batches=batches)
    latest = nodes.Latest()
    await _record(g, latest)
    for n, (job_id, job_events) in enumerate(g.by_job.items()):
        if n % _YIELD_EVERY == _YIELD_EVERY - 1:
            await asyncio.sleep(0)
        known = base(job_id)
        old = known.view if known is not None else None
        view = domain.merge(old, job_events)
        if known is not None and view == old:
            continue  # nothing new (redelivered events)
        row = job_write(view, known.version if known is not None else None)
        (g.inserts if known is None else g.updates).append(row)
        g.results[job_id] = Cached(view=view, version=row.version)
    g.drains = latest.drain_rows()
    return g


async def _record(g: Group, latest: nodes.Latest) -> None:
    """Each event of the group's batches once: its row in ``g.events``, a job's in ``g.by_job``, a
    node's drain fact into ``latest`` (a status is skipped: :mod:`services.metadata.fleet` has it)."""
    seen: set[str] = set()
    for b in g.batches:
        await asyncio.sleep(0)
        for event, d in b.items:
            msg = d.msg
            body = msg.data.decode()
            if isinstance(event, ev.JobEvent):
                key, job_id, node_id = event.event_id, event.job_id, None
            elif isinstance(event, ev.NodeStatus):
                continue  # state, not an event: services.metadata.fleet writes it
            elif isinstance(event, ev.NodeDraining):
                key, job_id, node_id = nodes.node_event_key(event), None, event.node_id
                latest.add(event)
            else:  # pragma: no cover - the decoders yield nothing else
                raise TypeError(f"cannot project {type(event).__name__}")
            if key in seen:
                continue
            seen.add(key)
            kind = domain.event_type(event)
            seq = stream_sequence(msg.reply)
            g.events.append((key, kind, job_id, node_id, event.at, _STREAM_OF[kind], seq, body))
            if job_id is not None:
                g.by_job.setdefault(job_id, []).append(event)  # type: ignore[arg-type]
