"""Every use of nats-py's private parts, in one place, for the one nats-py version they were checked on.

The rest of the system touches no underscore attribute of a nats-py object: it calls the
functions below. Importing this module fails unless the installed nats-py is the version
pyproject.toml pins (:data:`PINNED`), because private parts change without notice.

What to re-verify before raising the pin (then set :data:`PINNED` to the new version):

- ``Client._process_msg(sid, subject, reply, data, headers)`` is still what the parser
  calls for every message, looked up on the instance (:func:`process_msg`, :func:`replace_process_msg`);
  ``Subscription._id`` is still the sid the parser passes, kept across reconnects
  (:func:`subscription_id`). ``tests/integration/test_direct.py`` checks both.
- ``JetStreamContext._nc`` and ``._prefix`` (:func:`connection`, :func:`api_prefix`), and
  that ``Msg(client, subject=, reply=, data=)`` builds an ackable message (:func:`message`):
  ``tests/integration/test_consumer.py`` acks, naks and terminates such messages.
- ``Request._msg`` and the ``Endpoint`` counters that ``$SRV.STATS`` reports (``_num_requests``,
  ``_num_errors``, ``_last_error``, ``_processing_time``, ``_average_processing_time``) and
  ``Service._endpoints`` (:func:`request_msg`, :func:`last_endpoint`, :func:`count_error`,
  :func:`add_processing_time`): ``tests/integration/test_micro.py`` reads the stats back.
- Behaviours worked around elsewhere, which a new version may fix or change: ``publish_async``'s
  future never completes when the server answers with an error (``publisher.py``); ``fetch``
  waits for the whole batch once a first message arrived (``puller.py``); ``nats.micro``
  counts only exceptions a handler raises as errors (``micro.py``); with
  ``max_reconnect_attempts=-1`` the first ``connect`` retries forever (``app.py``);
  ``KeyValue.purge_deletes`` never stops the watcher it opens, whose subscription then keeps
  receiving every update of the bucket into a full queue (memory grows for as long as the
  process lives, 64 MB of pending messages per call): :func:`purge_kv_deletes` is its copy that
  stops it, reading ``KeyValue._js``, ``._stream`` and ``._pre``
  (``tests/integration/test_teardown_retention.py`` purges markers through it).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from nats.micro.request import Request
from nats.micro.service import Service

PINNED = "2.16.0"
"""The nats-py version pyproject.toml pins, on which every function here was checked."""

INSTALLED = importlib.metadata.version("nats-py")

if INSTALLED != PINNED:
    raise ImportError(
        f"services.runtime.natspy: nats-py {INSTALLED} is installed, but the private parts of nats-py this"
        f" module uses were checked on {PINNED} only (the version pyproject.toml pins). Install nats-py=={PINNED},"
        " or re-verify the list in this module's docstring and raise PINNED."
    )

ProcessMsg = Callable[[int, bytes, bytes, bytes, bytes | None], Awaitable[None]]
"""``process_msg(sid, subject, reply, data, raw_headers)``, called by nats-py's parser per message."""


def connection(js: JetStreamContext) -> Client:
    """The core connection a JetStream context publishes on."""
    nc: Client = js._nc
    return nc


def api_prefix(js: JetStreamContext) -> str:
    """The JetStream API subject prefix of the context (``$JS.API``, or a domain's)."""
    prefix: str = js._prefix
    return prefix


def message(nc: Client, subject: bytes, reply: bytes, data: bytes) -> Msg:
    """A ``Msg`` that can be acked on ``nc``, built from a message's raw parts (no headers)."""
    return Msg(nc, subject=subject.decode(), reply=reply.decode(), data=data)


def subscription_id(sub: Any) -> int:
    """The sid the parser passes to ``process_msg`` for ``sub``'s messages."""
    sid: int = sub._id
    return sid


def process_msg(nc: Client) -> ProcessMsg:
    """What the parser of ``nc`` calls for every message."""
    current: ProcessMsg = nc._process_msg  # type: ignore[assignment]
    return current


def replace_process_msg(nc: Client, process_msg: ProcessMsg) -> ProcessMsg:
    """Have the parser of ``nc`` call ``process_msg`` for every message; returns the one it called before."""
    original: ProcessMsg = nc._process_msg  # type: ignore[assignment]
    nc._process_msg = process_msg  # type: ignore[method-assign,assignment]
    return original


def request_msg(req: Request) -> Msg:
    """The message behind a ``nats.micro`` request."""
    msg: Msg = req._msg
    return msg


def last_endpoint(svc: Service) -> object:
    """The endpoint ``svc.add_endpoint`` added last (for :func:`count_error` and :func:`add_processing_time`)."""
    endpoint: object = svc._endpoints[-1]
    return endpoint


def count_error(endpoint: object, last_error: str, *, add: int = 1) -> None:
    """Count an error reply in ``$SRV.STATS``, as nats-py counts an exception its handler raised
    (``add=0``: only record ``last_error``, for a request counted already)."""
    ep: Any = endpoint
    ep._num_errors += add
    ep._last_error = last_error


def add_processing_time(endpoint: object, elapsed_ns: int) -> None:
    """Add a request's processing time to the endpoint's ``$SRV.STATS`` (total and average)."""
    ep: Any = endpoint
    ep._processing_time += elapsed_ns
    ep._average_processing_time = ep._processing_time // max(1, ep._num_requests)


async def purge_kv_deletes(kv: KeyValue, older_than_s: float) -> int:
    """Remove the bucket's delete and purge markers older than ``older_than_s`` (a younger one is
    kept, as nats-py's ``purge_deletes`` does), stopping the watcher that found them; how many."""
    watcher = await kv.watchall()
    markers = []
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.operation in (KV_DEL, KV_PURGE):
                markers.append(entry)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    store: Any = kv
    now = datetime.now(UTC)
    purged = 0
    for entry in markers:
        if entry.created is not None and (now - entry.created).total_seconds() < older_than_s:
            continue
        await store._js.purge_stream(store._stream, subject=f"{store._pre}{entry.key}", keep=0)
        purged += 1
    return purged
