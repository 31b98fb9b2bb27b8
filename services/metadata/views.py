"""Job views between the projection and the store (pure but for the token): the rows a view is
written as, the cache of views this instance wrote, and views folded from stored event bodies."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence

import msgspec

from schemas import events as ev
from services.metadata import domain
from services.metadata.sql_jobs import JobWrite, Reservation


def _token() -> int:
    """A fresh write token for ``jobs.version`` (never 0, the token of rows written before tokens)."""
    return random.getrandbits(62) + 1


def job_write(view: domain.JobView, expected: int | None) -> JobWrite:
    state, reason = domain.state_of(view)
    return JobWrite(
        job_id=view.job_id,
        expected=expected,
        version=_token(),
        state=state,
        reason=reason,
        submitted_at=view.submitted_at,
        updated_at=view.updated_at,
        released=view.released,
        reservations=reservations_of(view),
        tenant=view.tenant,
    )


def reservations_of(view: domain.JobView) -> list[Reservation] | None:
    if view.placement is None:
        return None
    return [
        Reservation(
            replica=replica,
            node_id=node_id,
            cpu=res.cpu if res else None,
            memory_mb=res.memory_mb if res else None,
            gpu=res.gpu if res else None,
        )
        for replica, node_id, res in domain.reservations(view)
    ]


DEFAULT_CACHE_JOBS = 20_000
"""Job views kept in memory (their memory cost: services/metadata/README.md)."""


class Cached(msgspec.Struct, frozen=True):
    """A job's view as stored in its row, with the row's write token."""

    view: domain.JobView
    version: int


class ViewCache:
    """The views this instance wrote or read last, least recently written evicted first.

    Not authoritative: an entry is only a guess of the row's content, checked by its token
    when the row is next written (another instance may have written the row since).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, Cached] = OrderedDict()

    def get(self, job_id: str) -> Cached | None:
        return self._entries.get(job_id)

    def put(self, job_id: str, entry: Cached) -> None:
        self._entries[job_id] = entry
        self._entries.move_to_end(job_id)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def discard(self, job_ids: Sequence[str]) -> None:
        """Forget these jobs (deleted by retention)."""
        for job_id in job_ids:
            self._entries.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._entries)


_job_event_decoder: msgspec.json.Decoder[ev.JobEvent] = msgspec.json.Decoder(
    ev.JobEvents | ev.PlacementEvents | ev.ClusterEvents
)


def fold_bodies(rows: Sequence[tuple[str, str]]) -> dict[str, domain.JobView]:
    """Each job's view, folded from the recorded bodies of its events (``(job_id, body)`` rows)."""
    by_job: dict[str, list[ev.JobEvent]] = {}
    for job_id, body in rows:
        by_job.setdefault(job_id, []).append(_job_event_decoder.decode(body))
    return {job_id: domain.merge(None, events) for job_id, events in by_job.items()}


__all__ = ["DEFAULT_CACHE_JOBS", "Cached", "ViewCache", "fold_bodies", "job_write", "reservations_of"]
