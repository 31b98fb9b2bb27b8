"""Declaring the streams and durable consumers of ``schemas.subjects`` on the server (idempotent).

Besides the streams, :func:`ensure_streams` declares the durables the system provisions for
clients that may not create them (:data:`PROVISIONED`: the Cluster Manager's ``cluster-manager``
on PLACEMENTS, §8.6): every service's start-up does, so they exist before anyone reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import msgspec
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from schemas import subjects as s
from services.runtime.backoff import delay
from services.runtime.config import RetentionConf

log = structlog.get_logger()


def stream_config(spec: s.StreamSpec, replicas: int = 1) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.listens_on),
        subject_transform=js_api.SubjectTransform(src=spec.transform[0], dest=spec.transform[1])
        if spec.transform
        else None,
        republish=js_api.RePublish(src=spec.republish[0], dest=spec.republish[1]) if spec.republish else None,
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        duplicate_window=spec.duplicate_window_s,
        max_age=spec.max_age_s,
        max_bytes=spec.max_bytes,
        discard=js_api.DiscardPolicy.NEW if spec.discard_new else js_api.DiscardPolicy.OLD,
        num_replicas=replicas,
        allow_direct=True,
        allow_atomic=spec.atomic or None,
    )


NO_STORAGE = 10047
"""JetStream's error code for "insufficient storage resources available"."""


class StorageExceeded(RuntimeError):
    """The streams' ``max_bytes`` (reserved up front by nats-server) exceed its ``max_file_store``."""


RETAINED: frozenset[str] = frozenset(
    spec.name for spec in (s.JOBS, s.PLACEMENTS, s.CLUSTERS, s.TENANT_PLACEMENTS, s.DEADLETTERS)
)
"""The event streams given ``[retention]``'s age and size limits (discard old). NODES gets the age
only (one message per subject: its size is bounded by the fleet); KV buckets and the SNAPSHOTS
object store get neither (live records live there)."""


def retained(spec: s.StreamSpec, retention: RetentionConf | None) -> s.StreamSpec:
    """``spec`` with the limits ``retention`` gives it (unchanged when ``retention`` is None).

    Events streams (:data:`RETAINED`): ``max_age`` = ``events_max_age_s``, ``max_bytes`` =
    ``stream_max_bytes`` (-1: none), discard ``old``: the system keeps running at any rate (a full
    stream refusing new events would stop every submit, the failure this retention exists to end).
    No live job's fact is lost with its event: every service that folds a stream starts from its
    snapshot (SNAPSHOTS) or keeps the fact in a bucket or PostgreSQL, so only a durable consumer
    lagging past the window can miss an event, and that is reported loudly
    (:func:`aged_out_unread`, checked by every consumer loop). NODES: ``max_age`` only (a
    node silent that long is long lost; its last drain fact goes with it). The duplicate window is
    clamped to ``max_age`` (nats-server refuses a larger one), with a warning: a retried submit is then
    deduplicated for ``events_max_age_s`` only."""
    if retention is None or (spec.name not in RETAINED and spec.name != s.NODES.name):
        return spec
    max_age = retention.events_max_age_s
    window = spec.duplicate_window_s
    if window > max_age:
        log.warning(
            "duplicate window clamped to the stream's max_age",
            stream=spec.name,
            duplicate_window_s=window,
            events_max_age_s=max_age,
        )
        window = max_age
    if spec.name == s.NODES.name:
        return msgspec.structs.replace(spec, max_age_s=max_age, duplicate_window_s=window)
    return msgspec.structs.replace(
        spec,
        max_age_s=max_age,
        max_bytes=retention.stream_max_bytes,
        discard_new=False,
        duplicate_window_s=window,
    )


LAST_PER_SUBJECT: frozenset[str] = frozenset(spec.name for spec in s.STREAMS if spec.max_msgs_per_subject > 0)
"""Streams keeping the last message(s) of each subject (NODES): one replaced there is superseded by its
subject's newer message, not lost, and the sequences other subjects' replacements free do not say a
durable reading some subjects only (metadata's, drain facts) missed anything."""


async def aged_out_unread(js: JetStreamContext, spec: s.ConsumerSpec) -> int:
    """How many sequences left the stream (age or size limit) above the durable's ack floor while
    it still had messages to read: events it may never see (0 when it is caught up or none left,
    and for the streams of :data:`LAST_PER_SUBJECT`). The server moves a caught-up consumer's ack
    floor past the subjects it does not read, so a consumer of rare subjects is not reported for
    the others aging out."""
    if spec.stream in LAST_PER_SUBJECT:
        return 0
    ci = await js.consumer_info(spec.stream, spec.durable)
    if not (ci.num_pending or ci.num_ack_pending):
        return 0
    first = (await js.stream_info(spec.stream)).state.first_seq
    floor = ci.ack_floor.stream_seq if ci.ack_floor is not None else 0
    return max(0, first - 1 - (floor or 0))


PROVISIONED: tuple[s.ConsumerSpec, ...] = (s.CLUSTER_MANAGER,)
"""Durables declared by the system for a client role that may read but not create them."""


async def ensure_streams(
    js: JetStreamContext,
    streams: Iterable[s.StreamSpec] = s.STREAMS,
    *,
    replicas: int = 1,
    duplicate_window_s: float | None = None,
    retention: RetentionConf | None = None,
    provisioned: Iterable[s.ConsumerSpec] = PROVISIONED,
) -> None:
    """Create or update every stream, then the ``provisioned`` durables on those streams
    (idempotent; safe when several services start at once).

    ``retention`` (the config's ``[retention]``) sets the streams' age and size limits (see
    :func:`retained`); an existing stream is updated to them (``update_stream``, as for every other
    field), so limits reach a stream created before they existed. None leaves the specs' own."""
    streams = tuple(streams)
    for spec in streams:
        if duplicate_window_s is not None and spec.name == s.JOBS.name:
            spec = msgspec.structs.replace(spec, duplicate_window_s=duplicate_window_s)
        spec = retained(spec, retention)
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
                if e.err_code == NO_STORAGE:
                    raise StorageExceeded(
                        f"stream {spec.name}: max_bytes {spec.max_bytes} does not fit in the server's JetStream "
                        "storage (every stream's max_bytes is reserved up front): lower [retention] "
                        "stream_max_bytes or raise max_file_store in nats.conf"
                    ) from e
                if attempt == 4:
                    raise
                log.debug("stream declare raced", stream=spec.name, error=str(e))
                await asyncio.sleep(delay(attempt + 1, base=0.05, cap=0.2))
    names = {spec.name for spec in streams}
    for consumer in provisioned:
        if consumer.stream in names:
            await ensure_provisioned(js, consumer)


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
            await asyncio.sleep(delay(attempt + 1, base=0.05, cap=0.2))


def same_consumer(want: js_api.ConsumerConfig, have: js_api.ConsumerConfig) -> bool:
    """Whether the server's consumer ``have`` already is ``want`` (the fields :func:`consumer_config`
    sets; the server fills in the others)."""

    def filters(c: js_api.ConsumerConfig) -> set[str]:
        return set(c.filter_subjects or ()) | ({c.filter_subject} if c.filter_subject else set())

    return (
        have.description == want.description
        and have.deliver_policy == want.deliver_policy
        and have.ack_policy == want.ack_policy
        and have.ack_wait == want.ack_wait
        and have.max_deliver == want.max_deliver
        and list(have.backoff or ()) == list(want.backoff or ())
        and filters(have) == filters(want)
        and have.max_ack_pending == want.max_ack_pending
        and have.max_waiting == want.max_waiting
    )


async def ensure_provisioned(js: JetStreamContext, spec: s.ConsumerSpec) -> None:
    """Declare a durable someone else reads (``cluster-manager``): created when missing, updated
    when its configuration differs, left alone (never even re-declared, so its reader's
    deliveries in flight are untouched) when it already is ``spec``."""
    try:
        info = await js.consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        pass
    else:
        if same_consumer(consumer_config(spec), info.config):
            return
        log.info("updating provisioned consumer", stream=spec.stream, durable=spec.durable)
    await ensure_consumer(js, spec)
