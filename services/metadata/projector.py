"""The projection of batches of events into PostgreSQL (the batch handler of every metadata consumer).

The projection (:class:`Projector`) writes the batches of all four consumers in one
transaction at a time: record the events (their key makes a redelivery a no-op), merge
them into the jobs' views (kept in memory, checked against the row's write token) with the
pure :func:`services.metadata.domain.merge`, write the jobs rows (state, reservations) and the node
drain facts; the consumer acks after the commit. The next group is prepared while one is written.
Node statuses are not projected here: :mod:`services.metadata.fleet` coalesces and flushes them.
"""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import structlog

from schemas import events as ev
from schemas import subjects as s
from services.metadata import domain
from services.metadata.adapters import Database, JobWrite, Tx, Unavailable, is_unavailable
from services.metadata.groups import Batch, Group, Items, prepare
from services.metadata.views import DEFAULT_CACHE_JOBS, Cached, ViewCache, fold_bodies, job_write

log = structlog.get_logger()

DECODERS: dict[str, msgspec.json.Decoder[ev.Event]] = {
    s.JOBS.name: msgspec.json.Decoder(ev.JobEvents),
    s.PLACEMENTS.name: msgspec.json.Decoder(ev.PlacementEvents),
    s.CLUSTERS.name: msgspec.json.Decoder(ev.ClusterEvents),
    s.NODES.name: msgspec.json.Decoder(ev.NodeEvents),
}
"""How each projected stream's payloads decode (a payload of another type is poison)."""


class _Conflict(Unavailable):
    """A job row changed under a write in a way a retry of the batch settles."""


class Projector:
    """The batch handler of every metadata consumer: a pipeline of one transaction at a time.

    :meth:`project` queues a batch and waits for its commit. A single runner takes every batch
    queued (from all four consumers) as one group, at most one group per ``write_every_s``,
    *prepares* it in Python (event rows, merged views, reservation rows) and writes it in one
    transaction; while that transaction runs in PostgreSQL, the next group is prepared, so Python
    and PostgreSQL work at the same time.

    Views are kept in a :class:`ViewCache`, so a job's row is not read back to merge new events:
    a cached job is updated ``WHERE version = <its cached token>`` with a fresh token, a job not
    in the cache is inserted ``ON CONFLICT DO NOTHING``. A row that did not match (written by
    another instance, or by a transaction of ours that failed) is reloaded under lock and the
    group's events are merged into it again. The next group is prepared on the views of the
    group in flight: if that one fails, the next is prepared again from committed views only.
    If a combined write fails with anything but an outage, each batch is retried on its own so
    that a poison message is only ever blamed on its own batch (whose consumer then isolates it).
    """

    def __init__(self, db: Database, cache_jobs: int = DEFAULT_CACHE_JOBS, *, write_every_s: float = 0.0) -> None:
        self._db = db
        self._every = write_every_s
        """At most one group taken per this period: batches arriving meanwhile wait and are
        written together (one transaction, one row write per job for all its new events)."""
        self._due = 0.0
        self.cache = ViewCache(cache_jobs)
        self._queue: list[Batch] = []
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._inflight: dict[str, Cached] = {}
        self.stats = {"groups": 0, "events": 0, "job_writes": 0, "conflicts": 0, "duplicates": 0}

    async def project(self, items: Items) -> None:
        loop = asyncio.get_running_loop()
        batch = Batch(items=items, done=loop.create_future())
        self._queue.append(batch)
        self._wake.set()
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        await batch.done

    async def close(self) -> None:
        """Stop the runner (after the consumers have stopped: nothing is queued any more)."""
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
            self._runner = None

    # --- the pipeline ---------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        writing: asyncio.Task[None] | None = None
        written: Group | None = None
        prepared: Group | None = None
        while True:
            if writing is None and prepared is not None:  # start the next write first, then prepare
                self._inflight = prepared.results
                written, prepared = prepared, None
                writing = loop.create_task(self._write(written))
                await asyncio.sleep(0)  # let it send its first statement before we hold the loop
            left = 0.0  # > 0: batches are queued, to be taken that much later
            if prepared is None and self._queue:
                left = self._due - loop.time()
                if left <= 0:
                    self._due = loop.time() + self._every
                    prepared = await self._prepare_or_fail(self._take())
                    continue
            if writing is None:
                if left > 0:
                    await asyncio.sleep(left)  # more batches gather meanwhile: one bigger group
                else:
                    self._wake.clear()
                    await self._wake.wait()
                continue
            if prepared is None and left <= 0:  # nothing queued: wait for the write, or for batches
                self._wake.clear()
                wake = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait((writing, wake), return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
            else:
                await asyncio.wait((writing,), timeout=left if prepared is None else None)
            if writing.done():
                assert written is not None
                ok = self._finish(written, writing)
                writing, written, self._inflight = None, None, {}
                if not ok and prepared is not None:  # it was prepared on views that were not committed
                    prepared = await self._prepare_or_fail(prepared.batches)

    def _take(self) -> list[Batch]:
        if self._queue[0].alone:
            return [self._queue.pop(0)]
        n = next((i for i, b in enumerate(self._queue) if b.alone), len(self._queue))
        group, self._queue = self._queue[:n], self._queue[n:]
        return group

    async def _prepare_or_fail(self, batches: list[Batch]) -> Group | None:
        try:
            return await self._prepare(batches)
        except Exception as e:
            self._failed(batches, e)
            return None

    def _finish(self, group: Group, task: asyncio.Task[None]) -> bool:
        """Resolve the group's batches; False if it failed."""
        e = task.exception()
        if e is None:
            for b in group.batches:
                if not b.done.done():
                    b.done.set_result(None)
            return True
        self._failed(group.batches, e)
        return False

    def _failed(self, batches: list[Batch], e: BaseException) -> None:
        if len(batches) > 1 and not is_unavailable(e):
            log.warning("combined write failed; retrying its batches one by one", batches=len(batches), error=repr(e))
            self._queue[:0] = [Batch(items=b.items, done=b.done, alone=True) for b in batches]
            self._wake.set()
            return
        for b in batches:
            if not b.done.done():
                b.done.set_exception(e)

    def _base(self, job_id: str) -> Cached | None:
        return self._inflight.get(job_id) or self.cache.get(job_id)

    async def _prepare(self, batches: list[Batch]) -> Group:
        """The group's rows and views (:func:`services.metadata.groups.prepare`), on the views of the
        group in flight, else the cache's."""
        return await prepare(batches, self._base)

    async def _write(self, g: Group) -> None:
        """Write a prepared group in one transaction; on commit, its views become the cache's."""
        try:
            results = await self._write_once(g, seen_before=False)
        except asyncpg.exceptions.UniqueViolationError:  # some of its events were recorded before
            self.stats["duplicates"] += 1
            results = await self._write_once(g, seen_before=True)
        for job_id, entry in results.items():
            self.cache.put(job_id, entry)
        self.stats["groups"] += 1
        self.stats["events"] += len(g.events)
        self.stats["job_writes"] += len(g.inserts) + len(g.updates)
        log.debug("group projected", batches=len(g.batches), events=len(g.events), jobs=len(results))

    async def _write_once(self, g: Group, *, seen_before: bool) -> dict[str, Cached]:
        results = dict(g.results)
        async with self._db.transaction() as tx:
            if g.events:
                await tx.insert_events(g.events, seen_before=seen_before)
            written = await tx.write_group(g.inserts, g.updates, g.drains)
            conflicts = [r.job_id for rows in (g.inserts, g.updates) for r in rows if r.job_id not in written]
            if conflicts:
                self.stats["conflicts"] += len(conflicts)
                await self._reload(tx, g, conflicts, results)
        return results

    async def _reload(
        self,
        tx: Tx,
        g: Group,
        conflicts: list[str],
        results: dict[str, Cached],
    ) -> None:
        """Rows that were not as the cache thought: lock them, fold each job's recorded events (this
        group's included: they were inserted above) into a fresh view, and write them again."""
        stored = {s.job_id: s for s in await tx.lock_jobs(conflicts)}
        views = fold_bodies(await tx.events_of(conflicts))
        rewrites: list[JobWrite] = []
        missing: list[JobWrite] = []
        for job_id in conflicts:
            s = stored.get(job_id)
            view = domain.merge(views.get(job_id), g.by_job[job_id])  # idempotent: a no-op unless a race
            row = job_write(view, s.version if s is not None else None)
            (rewrites if s is not None else missing).append(row)
            results[job_id] = Cached(view=view, version=row.version)
        log.info("job rows changed by another writer; merged again", jobs=len(conflicts))
        if rewrites and len(await tx.update_jobs(rewrites)) != len(rewrites):
            raise _Conflict("a locked job row changed")  # cannot happen: we hold the row locks
        if missing and len(await tx.insert_jobs(missing)) != len(missing):
            raise _Conflict("job rows appeared while being recreated; the batch is retried")


__all__ = ["DECODERS", "Projector"]
