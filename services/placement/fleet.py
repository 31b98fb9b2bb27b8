"""Lost and drained nodes, and degraded jobs: which placed jobs to re-place, and when.

Every ``interval`` (and at once when a drain arrives, :attr:`Fleet.wake`):

- nodes silent for ``node_lost_s`` are marked lost (an ``OrderedDict`` by last status, so
  it costs O(lost)); a node holding replicas whose status this instance never had (e.g.
  after a restart it stayed silent) is lost ``node_lost_s`` after it was first noticed;
- every job holding replicas on a leaving node (lost, ``down``, drained, ``draining``) is
  queued for re-placement with the decider (``World.evacuate`` and ``World.holders``:
  no scan of the placed replicas);
- when capacity changed since the last pass (``World.epoch``: a status, a drain, a release),
  every job missing replicas (``World.short``) is queued too, until all are placed again
  or the job is released; no deadline.

A job is queued once while its re-placement is in flight; a re-placement that moves
nothing (the node came back, another instance moved it, it was released) stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from functools import partial

import structlog

from services.placement.ports import Clock
from services.placement.state import World

log = structlog.get_logger()


class Fleet:
    def __init__(
        self,
        world: World,
        move: Callable[[str], asyncio.Future[str]],
        clock: Clock,
        *,
        lost_s: float,
        interval: float | None = None,
    ) -> None:
        self.world = world
        self.move = move
        self.clock = clock
        self.lost_s = lost_s
        self.interval = interval if interval is not None else min(1.0, lost_s / 4)
        self.wake = asyncio.Event()
        """Set to look at once (a drain or undrain arrived)."""
        self.inflight: set[str] = set()
        self._unheard_since: dict[str, float] = {}
        self._epoch = -1

    def due(self, now: float) -> list[str]:
        """The jobs to re-place now (each once), marking newly lost nodes on the way."""
        w = self.world
        for nid in w.find_lost(now, self.lost_s):
            log.info("node lost", node_id=nid, silent_s=self.lost_s)
        if w.unheard or self._unheard_since:
            for nid in list(self._unheard_since):
                if nid not in w.unheard:
                    del self._unheard_since[nid]
            for nid in w.unheard:
                since = self._unheard_since.setdefault(nid, now)
                if now - since >= self.lost_s and w.leaving(nid) is None:
                    log.info("node lost", node_id=nid, never_heard=True)
                    w.mark_lost(nid)
        jobs = dict.fromkeys(w.jobs_to_move())
        if w.epoch != self._epoch and w.short:
            self._epoch = w.epoch
            jobs.update(dict.fromkeys(sorted(w.short)))
            if w.short & self.inflight:  # their retry must see this change of capacity too
                self._epoch = -1
        return list(jobs)

    def tick(self) -> int:
        """Queue the due jobs not already in flight; returns how many were queued."""
        n = 0
        for job_id in self.due(self.clock.monotonic()):
            if job_id in self.inflight:
                continue
            self.inflight.add(job_id)
            self.move(job_id).add_done_callback(partial(self._done, job_id))
            n += 1
        return n

    def _done(self, job_id: str, fut: asyncio.Future[str]) -> None:
        self.inflight.discard(job_id)
        if fut.cancelled():
            return
        error = fut.exception()
        if error is not None:
            log.warning("re-placement not stored; will retry", job_id=job_id, error=repr(error))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval)
            self.wake.clear()
            if not stop.is_set():
                self.tick()
