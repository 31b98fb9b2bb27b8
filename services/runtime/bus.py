"""The NATS edge: connect with reconnect, declare streams and consumers, publish events."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import msgspec
import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from schemas import events as ev
from schemas import subjects as s
from services.runtime.config import Settings

log = structlog.get_logger()


async def connect(settings: Settings, name: str) -> Client:
    """Connect, retrying forever on reconnect; the first connect is retried for ~30 s."""

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    async def on_error(e: Exception) -> None:
        log.warning("nats error", error=repr(e))

    return await nats.connect(
        servers=settings.nats_url.split(","),
        name=name,
        user=settings.nats_user,
        password=settings.nats_password,
        connect_timeout=2,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        pending_size=64 * 1024 * 1024,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )


def stream_config(spec: s.StreamSpec, replicas: int = 1) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        duplicate_window=spec.duplicate_window_s,
        max_age=spec.max_age_s,
        num_replicas=replicas,
        allow_direct=True,
    )


async def ensure_streams(
    js: JetStreamContext,
    streams: Iterable[s.StreamSpec] = s.STREAMS,
    *,
    replicas: int = 1,
    duplicate_window_s: float | None = None,
) -> None:
    """Create or update every stream (idempotent; safe when several services start at once)."""
    for spec in streams:
        if duplicate_window_s is not None and spec.name == s.JOBS.name:
            spec = msgspec.structs.replace(spec, duplicate_window_s=duplicate_window_s)
        cfg = stream_config(spec, replicas)
        for attempt in range(5):
            try:
                try:
                    await js.stream_info(spec.name)
                except NotFoundError:
                    await js.add_stream(cfg)
                else:
                    await js.update_stream(cfg)
                break
            except nats.js.errors.APIError as e:  # a concurrent create: look again
                if attempt == 4:
                    raise
                log.debug("stream declare raced", stream=spec.name, error=str(e))
                await asyncio.sleep(0.05 * (attempt + 1))


def consumer_config(spec: s.ConsumerSpec) -> js_api.ConsumerConfig:
    filters = list(spec.filter_subjects)
    return js_api.ConsumerConfig(
        durable_name=spec.durable,
        name=spec.durable,
        description=spec.description,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        backoff=list(spec.backoff_s) or None,
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
        max_ack_pending=spec.max_ack_pending,
        max_waiting=512,
    )


async def ensure_consumer(js: JetStreamContext, spec: s.ConsumerSpec) -> None:
    """Create or update a durable pull consumer (idempotent)."""
    cfg = consumer_config(spec)
    for attempt in range(5):
        try:
            await js.add_consumer(spec.stream, cfg)
            return
        except nats.js.errors.APIError as e:
            if attempt == 4:
                raise
            log.debug("consumer declare raced", durable=spec.durable, error=str(e))
            await asyncio.sleep(0.05 * (attempt + 1))


class Publisher:
    """Publishes events to JetStream with ``Nats-Msg-Id`` = ``event_id``.

    ``publish`` waits for the stream's ack; ``publish_many`` pipelines the publishes
    and waits for all acks, so a caller acks its input only once outputs are stored.
    """

    def __init__(self, js: JetStreamContext, timeout: float = 5.0) -> None:
        self._js = js
        self._timeout = timeout

    async def publish(self, event: ev.Event) -> js_api.PubAck:
        return await self._js.publish(
            ev.subject_of(event),
            ev.encode(event),
            timeout=self._timeout,
            headers={s.MSG_ID_HEADER: event.event_id} if event.event_id else None,
        )

    async def publish_many(self, events: Sequence[ev.Event]) -> list[js_api.PubAck]:
        if len(events) == 1:
            return [await self.publish(events[0])]
        futures = [
            await self._js.publish_async(
                ev.subject_of(e),
                ev.encode(e),
                headers={s.MSG_ID_HEADER: e.event_id} if e.event_id else None,
            )
            for e in events
        ]
        return list(await asyncio.wait_for(asyncio.gather(*futures), self._timeout))
