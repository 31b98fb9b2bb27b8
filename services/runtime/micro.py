"""NATS micro service with concurrent endpoints and contract-shaped error replies.

nats-py's ``nats.micro`` answers PING/INFO/STATS; we add endpoints to it, but:

- requests are handled concurrently (nats-py runs one subscription's callbacks one
  after another, so a handler waiting on JetStream would serialise every request);
  in-flight requests are bounded and finished on stop;
- handlers return the reply body or raise :class:`RequestError`; one wrapper turns
  errors into ``Nats-Service-Error``/``-Code`` headers plus a JSON error body, maps
  ``msgspec`` decode/validation errors to 400 naming the field, and answers unknown
  exceptions with a generic 500 while logging the traceback;
- error replies are counted in ``$SRV.STATS`` (nats-py counts only raised exceptions);
- every request gets a reply: one too large for ``max_payload``, or one that cannot be
  sent, becomes an error reply (413 or 500) instead of leaving the client to time out;
- endpoint metadata is always an object, never null, for clients in other languages.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import NamedTuple

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from schemas import subjects as s
from schemas.replies import ErrorBody, ErrorDetail
from services.runtime import natspy

log = structlog.get_logger()

_enc = msgspec.json.Encoder()
_FIELD_RE = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN_RE = re.compile(r"unknown field `([^`]*)`")


class RequestError(Exception):
    """An error reply: HTTP-like code, message, and optionally the offending field."""

    def __init__(self, code: int, message: str, *, field: str | None = None, job_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.job_id = job_id


def from_decode_error(e: msgspec.DecodeError) -> RequestError:
    """400 naming the problem and the field (``resources.cpu``) where msgspec says."""
    text = str(e)
    m = _FIELD_RE.search(text)
    field = m.group(1).replace("[", ".").replace("]", "") if m else None
    unknown = _UNKNOWN_RE.search(text)
    if unknown:
        field = f"{field}.{unknown.group(1)}" if field else unknown.group(1)
    if not isinstance(e, msgspec.ValidationError):
        text = f"malformed JSON: {text}"
    return RequestError(400, text, field=field or None)


def error_reply(err: RequestError) -> tuple[bytes, dict[str, str]]:
    body = _enc.encode(
        ErrorBody(error=ErrorDetail(code=err.code, message=err.message, field=err.field, job_id=err.job_id))
    )
    # header values must be one line
    headers = {
        s.ERROR_HEADER: err.message.replace("\r", " ").replace("\n", " ")[:1024],
        s.ERROR_CODE_HEADER: str(err.code),
    }
    return body, headers


Handler = Callable[[Msg], Awaitable[bytes]]


class Endpoint(NamedTuple):
    """One endpoint of a service's table (see :meth:`MicroService.add_endpoints`)."""

    name: str
    subject: str
    handler: Handler
    metadata: Mapping[str, str]
    """What it takes and answers, for ``nats micro info`` (an object, never null)."""


def _count_error(endpoint: object, headers: Mapping[str, str], *, counted: bool = False) -> None:
    """Count an error reply in ``$SRV.STATS`` (once per request: ``counted`` when it already was)."""
    last_error = f"{headers[s.ERROR_CODE_HEADER]}:{headers[s.ERROR_HEADER]}"
    natspy.count_error(endpoint, last_error, add=0 if counted else 1)


def _headers_size(headers: Mapping[str, str] | None) -> int:
    """Bytes the headers take on the wire (``NATS/1.0``, one ``Name: value`` line each, a blank line)."""
    if not headers:
        return 0
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


class MicroService:
    """One NATS micro service per process, with concurrent, counted endpoints.

    ``async with MicroService(...) as svc`` starts it and stops it on exit; ``start`` and
    ``stop`` may also be called directly, each at most once in effect (idempotent).

    Every request with a reply subject gets a reply: one over the connection's
    ``max_payload`` (body and headers) becomes a 413 error reply naming both sizes, and a
    reply that cannot be sent for another reason is followed by a 500 error reply with the
    reason (ARCHITECTURE.md §8.7). Both are counted as errors in ``$SRV.STATS``.
    """

    def __init__(
        self,
        nc: Client,
        *,
        name: str,
        version: str,
        description: str,
        metadata: Mapping[str, str] | None = None,
        max_in_flight: int = 4096,
    ) -> None:
        self._nc = nc
        self._svc = Service(
            nc, ServiceConfig(name=name, version=version, description=description, metadata=dict(metadata or {}))
        )
        self._sem = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = log.bind(micro=name)
        self._started = False
        self._stopping = False
        self._stopped = asyncio.Event()

    @property
    def id(self) -> str:
        return self._svc.id

    @property
    def stopped(self) -> asyncio.Event:
        """Set once :meth:`stop` has finished."""
        return self._stopped

    async def __aenter__(self) -> MicroService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Answer PING/INFO/STATS (endpoints answer from :meth:`add_endpoint` on); idempotent."""
        if self._started or self._stopping:
            return
        self._started = True
        await self._svc.start()

    async def add_endpoint(
        self,
        name: str,
        subject: str,
        handler: Handler,
        *,
        max_body: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        endpoint_ref: list[object] = []

        async def dispatch(req: Request) -> None:
            await self._sem.acquire()
            task = asyncio.create_task(self._serve(natspy.request_msg(req), handler, max_body, endpoint_ref[0]))
            self._tasks.add(task)
            task.add_done_callback(self._done)

        await self._svc.add_endpoint(
            EndpointConfig(name=name, subject=subject, handler=dispatch, metadata=dict(metadata or {}))
        )
        endpoint_ref.append(natspy.last_endpoint(self._svc))

    async def add_endpoints(self, endpoints: Iterable[Endpoint], *, max_body: int | None = None) -> None:
        """Every endpoint of a service's table, each with the same body limit. One whose subject
        tenants import (``TENANT_REQUESTS``) is also served on ``sched.tenant.<subject>``, as
        ``<name>_tenant``: the handler tells them apart with ``services.runtime.tenancy.tenant_of``."""
        for e in endpoints:
            await self.add_endpoint(e.name, e.subject, e.handler, max_body=max_body, metadata=e.metadata)
            if e.subject in s.TENANT_REQUESTS:
                subject = s.tenant_request_subject(e.subject)
                await self.add_endpoint(f"{e.name}_tenant", subject, e.handler, max_body=max_body, metadata=e.metadata)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sem.release()

    async def _serve(self, msg: Msg, handler: Handler, max_body: int | None, endpoint: object) -> None:
        started = time.perf_counter_ns()
        headers: dict[str, str] | None = None
        try:
            if max_body is not None and len(msg.data) > max_body:
                raise RequestError(413, f"body of {len(msg.data)} bytes exceeds the limit of {max_body} bytes")
            body = await handler(msg)
        except RequestError as e:
            body, headers = error_reply(e)
        except msgspec.DecodeError as e:
            body, headers = error_reply(from_decode_error(e))
        except Exception:
            self._log.exception("request failed", subject=msg.subject)
            body, headers = error_reply(RequestError(500, "internal error"))
        if headers is not None:
            # counted like nats-py counts raised errors, so `nats micro stats` shows them
            _count_error(endpoint, headers)
        natspy.add_processing_time(endpoint, time.perf_counter_ns() - started)
        if msg.reply:
            await self._reply(msg, body, headers, endpoint)

    async def _reply(self, msg: Msg, body: bytes, headers: dict[str, str] | None, endpoint: object) -> None:
        """Send the reply; one too large, or one that fails, becomes an error reply (never silence)."""
        size, limit = len(body) + _headers_size(headers), self._nc.max_payload
        if size > limit:
            self._log.error("reply too large; answering 413", subject=msg.subject, size=size, max_payload=limit)
            counted = headers is not None
            body, headers = error_reply(
                RequestError(413, f"reply of {size} bytes exceeds max_payload of {limit} bytes")
            )
            _count_error(endpoint, headers, counted=counted)
        try:
            await self._nc.publish(msg.reply, body, headers=headers)
            return
        except Exception as e:
            self._log.error("reply failed; answering 500", subject=msg.subject, error=repr(e))
            counted = headers is not None
            body, headers = error_reply(RequestError(500, f"reply could not be sent: {e!r}"))
            _count_error(endpoint, headers, counted=counted)
        try:
            await self._nc.publish(msg.reply, body, headers=headers)
        except Exception as e:  # the connection itself is failing: the client's timeout is all that is left
            self._log.warning("error reply failed too", subject=msg.subject, error=repr(e))

    async def stop(self) -> None:
        """Stop taking requests, then finish the ones in flight; idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        await self._svc.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        self._stopped.set()
