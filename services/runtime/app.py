"""Process lifecycle shared by every service: config, logging, NATS, signals, drain.

``run(name, main)`` builds a :class:`Runtime` (the composition root's raw parts),
calls ``main(rt)``, which enters its micro service and consumers in an
``AsyncExitStack`` and returns once ``rt.stop`` is set (SIGTERM/SIGINT) and its
in-flight work is finished. The NATS connection, entered first, is drained last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from schemas.subjects import (
    DEFAULT_INBOX_PREFIX,
    JOB_LIFECYCLE,
    QUOTAS,
    ROLE_INBOX_PREFIXES,
    SERVICES_INBOX_PREFIX,
    STREAMS,
    ConsumerSpec,
)
from services.runtime.backoff import delay
from services.runtime.config import Config, Settings, load_config, load_settings
from services.runtime.log import configure
from services.runtime.micro import MicroService
from services.runtime.streams import ensure_streams

VERSION = "0.1.0"

_log = structlog.get_logger()
_T = TypeVar("_T")


@dataclass
class Runtime:
    name: str
    settings: Settings
    config: Config
    nc: Client
    js: JetStreamContext
    log: structlog.stdlib.BoundLogger
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def metadata(self, **extra: str) -> dict[str, str]:
        """Micro-service metadata: always an object of strings."""
        return {"instance_id": self.settings.instance_id, **extra}

    def micro_service(self, description: str, consumers: Iterable[ConsumerSpec] = (), **extra: str) -> MicroService:
        """This process's micro service, to enter in its stack: named after the process, at
        :data:`VERSION`, its metadata the instance id, the durable consumers it reads
        (``stream/durable``, comma-separated) and ``extra``."""
        names = ",".join(f"{c.stream}/{c.durable}" for c in consumers)
        meta = self.metadata(**({"consumers": names} if names else {}), **extra)
        return MicroService(self.nc, name=self.name, version=VERSION, description=description, metadata=meta)


EX_CONFIG = 78
"""Exit code (sysexits.h) of a service whose NATS credentials are refused or lack a permission."""

SERVICES_ROLE = "services"
"""The nats.conf user every service connects as."""

_VIOLATION = re.compile(r"permissions violation for (publish|subscription) to\s+[\"']?([^\s\"']+)", re.IGNORECASE)


class Refused(Exception):
    """NATS refused these credentials or a permission the process needs: a configuration error,
    reported in one line (:attr:`message`) instead of retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def who(user: str | None) -> str:
    """The NATS user as a message names it (no user given: the server's ``no_auth_user``)."""
    return f'NATS user "{user}"' if user else "NATS without NATS_USER (the server's no_auth_user)"


def authorization_violation(error: BaseException) -> bool:
    """Whether nats-py's ``error`` is the server refusing the user or password."""
    return isinstance(error, nats.errors.AuthorizationError) or "authorization violation" in str(error).lower()


_UPPER_TOKENS = {
    token.lower(): token
    for token in (
        *("$JS", "$KV", "$SRV", "API", "ACK", "FC", "INFO", "NAMES", "LIST", "PING", "STATS"),
        *("STREAM", "CONSUMER", "CREATE", "UPDATE", "DELETE", "PURGE", "DURABLE", "MSG", "NEXT", "GET", "DIRECT"),
        *(spec.name for spec in STREAMS),
        *(spec.name for spec in (JOB_LIFECYCLE, QUOTAS)),
    )
}


def canonical_subject(subject: str) -> str:
    """A subject as nats-py reports it (lower-cased) made readable again: the upper-case tokens of
    ``$JS``/``$KV``/``$SRV`` subjects (API verbs, streams, buckets) restored, a reply inbox shown
    as its prefix's wildcard (``_INBOX_services.>``)."""
    for prefix in (*ROLE_INBOX_PREFIXES.values(), DEFAULT_INBOX_PREFIX):
        if subject.lower().startswith(prefix.lower() + "."):
            return f"{prefix}.>"
    if not subject.startswith("$"):  # the scheduler's own subjects are lower-case
        return subject
    return ".".join(_UPPER_TOKENS.get(token, token) for token in subject.split("."))


def permission_violation(error: BaseException) -> tuple[str, str] | None:
    """``("publish to" | "subscribe to", subject)`` when nats-py's ``error`` is a permission
    violation (``nats: Permissions Violation for Publish to "x"``), else None."""
    m = _VIOLATION.search(str(error))
    if m is None:
        return None
    return ("publish to" if m.group(1).lower() == "publish" else "subscribe to"), canonical_subject(m.group(2))


def refusal(error: BaseException, user: str | None, *, role: str = SERVICES_ROLE) -> Refused | None:
    """What ``error`` (as nats-py reports it to ``error_cb`` or raises) says about the credentials
    of ``user``, who should connect as ``role``: a :class:`Refused` for a wrong user or password
    or a permission violation, None for anything else (an unreachable server, a timeout)."""
    if authorization_violation(error):
        whom = f'user "{user}"' if user else "a connection without NATS_USER"
        return Refused(f"NATS refused {whom}: authorization violation (check NATS_USER / NATS_PASSWORD)")
    denied = permission_violation(error)
    if denied is None:
        return None
    hint = f"set NATS_USER={role} and NATS_PASSWORD" if user != role else f"check the {role} permissions in nats.conf"
    return Refused(f'{who(user)} may not {denied[0]} {denied[1]}: the services connect as role "{role}" ({hint})')


class Guard:
    """A watch on NATS's refusals: :meth:`report` (from nats-py's ``error_cb``) records the first
    one ``describe`` recognises, :meth:`check` runs work and raises that refusal as soon as it is
    recorded (rather than when the refused request times out)."""

    def __init__(self, describe: Callable[[BaseException], Refused | None]) -> None:
        self.describe = describe
        self.armed = True
        self.refused: asyncio.Future[Refused] = asyncio.get_running_loop().create_future()

    def report(self, error: BaseException) -> bool:
        """Record ``error`` if it is a refusal (while armed); whether it was."""
        r = self.describe(error) if self.armed else None
        if r is not None and not self.refused.done():
            self.refused.set_result(r)
        return r is not None

    async def check(self, work: Awaitable[_T]) -> _T:
        task = asyncio.ensure_future(work)
        pending: set[asyncio.Future[Any]] = {task, self.refused}
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if self.refused.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise self.refused.result()
        return task.result()


async def connect(settings: Settings, name: str, guard: Guard | None = None) -> Client:
    """Connect, reconnecting forever. With ``max_reconnect_attempts=-1`` nats-py retries the
    first connect forever too, every ``reconnect_time_wait`` (0.5 s) per server, logging each
    failure as "nats error": this returns once NATS accepts the connection. With a ``guard``
    (start-up), credentials the server refuses raise :class:`Refused` at once instead. Replies
    come on the services' own inboxes (``_INBOX_services.>``, the only ones their user may read)."""

    async def on_disconnect() -> None:
        _log.warning("nats disconnected")

    async def on_reconnect() -> None:
        _log.info("nats reconnected")

    async def on_error(e: Exception) -> None:
        if guard is None or not guard.report(e):
            _log.warning("nats error", error=repr(e))

    connecting = nats.connect(
        servers=settings.nats_url.split(","),
        name=name,
        user=settings.nats_user,
        password=settings.nats_password,
        connect_timeout=2,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        pending_size=64 * 1024 * 1024,
        inbox_prefix=SERVICES_INBOX_PREFIX,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
    return await (guard.check(connecting) if guard else connecting)


Main = Callable[[Runtime], Awaitable[None]]


FIRST_CONNECT_TRIES = 60


def first_connect_delay(attempt: int) -> float:
    """The wait after the ``attempt``-th failed first connect: 0.2 s growing 1.5-fold to 2 s."""
    return delay(attempt, base=0.2, factor=1.5, cap=2.0)


async def start_runtime(name: str, settings: Settings | None = None, config: Config | None = None) -> Runtime:
    """Configure logging, connect and declare the streams.

    An unreachable NATS is waited for as long as it takes (see :func:`connect`). An error
    that ``nats.connect`` raises instead of retrying is retried here: ``FIRST_CONNECT_TRIES``
    (60) times, :func:`first_connect_delay` apart, about 112 s of waiting in all, then the
    process exits. Credentials NATS refuses, or a permission it denies while the streams are
    declared, raise :class:`Refused` at once (:func:`run` logs it and exits with
    :data:`EX_CONFIG`)."""
    settings = settings or load_settings()
    config = config or load_config()
    log = configure(name, settings.log_format, settings.log_level)
    log.info("starting", nats=settings.nats_url, instance_id=settings.instance_id)
    guard = Guard(lambda e: refusal(e, settings.nats_user))
    nc = await _connect_with_retry(settings, name, log, guard)
    try:
        js = nc.jetstream(timeout=10)
        window = config.timeouts.idempotency_window_s
        await guard.check(
            ensure_streams(js, replicas=settings.stream_replicas, duplicate_window_s=window, retention=config.retention)
        )
    except BaseException:
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    guard.armed = False  # from now on a violation is logged, not fatal
    return Runtime(name=name, settings=settings, config=config, nc=nc, js=js, log=log)


async def _connect_with_retry(
    settings: Settings, name: str, log: structlog.stdlib.BoundLogger, guard: Guard | None = None
) -> Client:
    for attempt in range(1, FIRST_CONNECT_TRIES + 1):
        try:
            return await connect(settings, name, guard)
        except Refused:
            raise
        except Exception as e:
            log.warning("nats not reachable yet", attempt=attempt, error=repr(e))
            await asyncio.sleep(first_connect_delay(attempt))
    raise SystemExit(f"{name}: cannot reach NATS at {settings.nats_url}")


def tune_gc() -> None:
    """Fewer garbage collections. Services allocate many short-lived objects per message
    (decoded events, nats-py's Msg) and keep many long-lived ones (a node table, a view
    cache); with the default gen-0 threshold of 700 allocations the collector's passes over
    them cost a large share of a service's CPU (measured in services/metadata/README.md) and,
    in full passes over a large heap, pauses that show in tail latency. Nothing here builds
    reference cycles on purpose, so collecting rarely costs little memory. Call again once
    start-up state is built."""
    gc.collect()
    gc.freeze()  # what start-up allocated is never garbage: keep it out of every later pass
    gc.set_threshold(50_000, 20, 100)


@contextlib.asynccontextmanager
async def runtime(name: str, settings: Settings | None = None, config: Config | None = None) -> AsyncIterator[Runtime]:
    """A started :class:`Runtime`; on exit the connection is drained (at most 10 s)."""
    rt = await start_runtime(name, settings, config)
    try:
        yield rt
    finally:
        rt.log.info("shutting down")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(rt.nc.drain(), 10)
        rt.log.info("stopped")


def background(
    stack: contextlib.AsyncExitStack, stop: asyncio.Event, work: Coroutine[Any, Any, None]
) -> asyncio.Task[None]:
    """Run ``work`` (which must return once ``stop`` is set) as a task that ``stack`` awaits on
    exit, after setting ``stop`` (so an error unwinding the stack ends it too)."""
    task = asyncio.create_task(work)

    async def finish() -> None:
        stop.set()
        await task

    stack.push_async_callback(finish)
    return task


async def serve(name: str, main: Main) -> None:
    async with contextlib.AsyncExitStack() as stack:
        rt = await stack.enter_async_context(runtime(name))  # entered first: drained last
        tune_gc()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, rt.stop.set)
        await main(rt)


def run(name: str, main: Main) -> None:
    """Entry point of ``python -m services.<name>``; uses uvloop when available."""
    try:
        import uvloop

        runner: Callable[..., object] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        runner(serve(name, main))
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
    except Refused as e:
        _log.error(e.message, service=name)
        sys.exit(EX_CONFIG)
