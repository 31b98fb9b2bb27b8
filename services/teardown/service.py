"""Teardown wiring: three durable consumers feeding one state machine, the expiry timer, the reaper.

- ``teardown-jobs`` (JOBS: accepted, cancel_requested, completed, expired),
  ``teardown-placements`` (PLACEMENTS: decided, failed) and ``teardown-clusters``
  (CLUSTERS: provisioning, provisioned, provision_failed, instance_replaced) all go through
  :func:`services.teardown.domain.apply` on the job's KV record (compare-and-set).
- A release terminates the job's instances (by id and by tag), publishes
  ``cluster.torn_down`` (dedicated jobs) and ``placement.released`` with deterministic
  event ids, then marks the record released: a second trigger is a no-op, a crash in
  between is healed by the redelivery, and a re-publish is dropped by the stream.
- Expiry: deadlines live in the KV records (they survive restarts of every service); a
  KV watcher keeps them in memory and ``job.expired`` is published when one passes.
- Reaper: lists live instances carrying the project tag; one whose job is unknown (since
  launch) or ended more than ``orphan_grace_s`` ago is terminated and reported with a
  ``cluster.torn_down`` whose ``reason`` starts with ``orphan:``. A job whose record was
  forgotten (below) is unknown: its instance goes once it is ``orphan_grace_s`` old.
- Retention (issue #21): the same KV watcher keeps, per record of an ended and released job, when
  it ended and its revision; every ``min(retention.cleanup_every_s, retention.ended_keep_s)`` the
  records ended ``ended_keep_s`` ago are deleted (batched, each only at the revision seen) and
  delete markers older than ``ended_keep_s`` purged. So the bucket, a restart's replay of it and
  the in-memory maps hold live jobs plus about two windows. While a marker stands, a late event
  of that job is dropped (:class:`services.teardown.store.Forgotten`) instead of writing a new record.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime

import msgspec
import structlog
from nats.js.kv import KeyValue

from schemas import events as ev
from schemas import subjects as s
from schemas.lifecycle import JobLifecycle
from services.cloud.ec2 import Ec2
from services.cloud.records import record_entries
from services.runtime.backoff import sleep_unless
from services.runtime.config import LifecycleConf, RetentionConf
from services.runtime.delivery import Delivery
from services.runtime.publisher import Publisher
from services.teardown import domain
from services.teardown.store import Forgotten, LifecycleStore

log = structlog.get_logger()

decoder: msgspec.json.Decoder[domain.TeardownEvent] = msgspec.json.Decoder(domain.TeardownEvent)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Teardown:
    store: LifecycleStore
    ec2: Ec2
    publisher: Publisher
    conf: LifecycleConf
    _: KW_ONLY
    now: Callable[[], datetime] = _utcnow
    retention: RetentionConf = field(default_factory=RetentionConf)
    retired: dict[str, tuple[datetime, int]] = field(default_factory=dict)
    """Records of ended and released jobs: job id -> (ended at, revision), from the KV watcher."""

    # --- events -------------------------------------------------------------
    async def on_event(self, event: domain.TeardownEvent, _: Delivery | None = None) -> None:
        if domain.nothing_to_track(event):
            return
        now = self.now()
        blog = log.bind(job_id=event.job_id, event_id=event.event_id, type=ev.subject_of(event))
        try:
            rec, effect = await self.store.mutate(event.job_id, lambda r: domain.apply(r, event, now))
        except Forgotten:
            blog.debug("event of a forgotten job (ended and released long ago): nothing to do")
            return
        match effect:
            case domain.Release():
                await self._release(rec, effect, blog)
            case domain.TerminateLate():
                blog.warning("instances reported after the job was released; terminating", ids=effect.instance_ids)
                await self.ec2.terminate(effect.instance_ids)
            case None:
                blog.debug("recorded", end=rec.end, released=rec.released)

    async def _release(self, rec: JobLifecycle, r: domain.Release, blog: structlog.stdlib.BoundLogger) -> None:
        job_id = rec.job_id
        ids = set(r.instance_ids)
        if r.sweep:
            ids |= {i.instance_id for i in await self.ec2.job_instances(job_id)}
        terminated = await self.ec2.terminate(ids)
        if r.dedicated or terminated:
            await self.publisher.publish(
                ev.ClusterTornDown(
                    event_id=ev.event_id_for(job_id, s.CLUSTER_TORN_DOWN),
                    job_id=job_id,
                    instance_ids=terminated,
                    reason=r.end,
                )
            )
        await self.publisher.publish(
            ev.PlacementReleased(
                event_id=ev.event_id_for(job_id, s.PLACEMENT_RELEASED), job_id=job_id, reason=r.end, tenant=rec.tenant
            )
        )
        await self.store.mutate(job_id, lambda cur: (domain.mark_released(cur, job_id), None))
        blog.info("released", end=r.end, reason=r.reason, instances=terminated)

    # --- expiry ---------------------------------------------------------------
    async def expiry_loop(self, stop: asyncio.Event) -> None:
        deadlines: dict[str, datetime] = {}
        watcher = await self.store.kv.watchall()
        follower = asyncio.create_task(self._follow_deadlines(watcher, deadlines))
        try:
            while not stop.is_set():
                await sleep_unless(stop, self.conf.expiry_check_s)
                for job_id in domain.due(deadlines, self.now()):
                    await self._expire(job_id, deadlines)
        finally:
            follower.cancel()
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _follow_deadlines(self, watcher: KeyValue.KeyWatcher, deadlines: dict[str, datetime]) -> None:
        async for change in record_entries(watcher):
            if change is None:
                continue  # "caught up" marker
            job_id, rec, revision = change
            if rec is not None and rec.deadline is not None and rec.end is None:
                deadlines[job_id] = rec.deadline
            else:
                deadlines.pop(job_id, None)
            if rec is None:
                self.store.discard(job_id)  # deleted (by us or another instance): bounded with the bucket
            if (at := domain.retired_at(rec)) is not None:
                self.retired[job_id] = (at, revision)
            else:
                self.retired.pop(job_id, None)

    async def _expire(self, job_id: str, deadlines: dict[str, datetime]) -> None:
        rec, _ = await self.store.get(job_id)
        if rec is None or rec.end is not None or rec.deadline is None:
            deadlines.pop(job_id, None)
            return
        try:
            await self.publisher.publish(
                ev.JobExpired(
                    event_id=ev.event_id_for(job_id, s.JOB_EXPIRED), job_id=job_id, max_runtime_s=rec.max_runtime_s
                )
            )
        except Exception as e:  # stays in `deadlines`: tried again at the next tick
            log.warning("publishing job.expired failed; will retry", job_id=job_id, error=repr(e))
            return
        deadlines.pop(job_id, None)
        log.info("expired", job_id=job_id, max_runtime_s=rec.max_runtime_s)

    # --- retention --------------------------------------------------------------
    async def retention_loop(self, stop: asyncio.Event) -> None:
        """Forget old records until ``stop`` (needs :meth:`expiry_loop`'s watcher to fill ``retired``)."""
        every = min(self.retention.cleanup_every_s, self.retention.ended_keep_s)
        while not await sleep_unless(stop, every):
            try:
                await self.forget_once()
            except Exception as e:
                log.warning("forgetting ended jobs' records failed; will retry", error=repr(e))

    async def forget_once(self) -> int:
        """Delete the records ended and released ``ended_keep_s`` ago, then purge old delete markers."""
        keep = self.retention.ended_keep_s
        old = domain.forgettable(self.retired, self.now(), keep)
        deleted = await self.store.forget(old) if old else 0
        for job_id, rev in old:
            if self.retired.get(job_id, (None, -1))[1] == rev:
                del self.retired[job_id]  # the watcher says so too, unless it was written meanwhile
        await self.store.purge_markers(keep)
        if old:
            log.info("ended jobs' records forgotten", deleted=deleted, due=len(old), kept=len(self.retired))
        return deleted

    # --- orphan reaper --------------------------------------------------------
    async def reaper_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.reap_once()
            except Exception as e:
                log.warning("reaper pass failed", error=repr(e))
            await sleep_unless(stop, self.conf.reaper_interval_s)

    async def reap_once(self) -> list[str]:
        reaped: list[str] = []
        for inst in await self.ec2.project_instances():
            rec = (await self.store.get(inst.job_id))[0] if inst.job_id else None
            why = domain.orphan_reason(inst, rec, self.now(), self.conf.orphan_grace_s)
            if why is None:
                continue
            await self.ec2.terminate([inst.instance_id])
            reaped.append(inst.instance_id)
            job_id = inst.job_id or ""
            log.warning("orphan instance terminated", job_id=job_id, instance_id=inst.instance_id, why=why)
            await self.publisher.publish(
                ev.ClusterTornDown(
                    event_id=f"{job_id}:reaped:{inst.instance_id}",
                    job_id=job_id,
                    instance_ids=[inst.instance_id],
                    reason=f"orphan: {why}",
                )
            )
        return reaped
