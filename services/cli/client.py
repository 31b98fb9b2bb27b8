"""Connecting and asking: NATS errors turned into messages a person can act on.

Exit codes: 0 done, 1 the service answered with an error, 2 bad usage (argparse),
3 the system is not reachable (no connection, no responders, no answer in time),
4 NATS refused the credentials or a permission.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client

from schemas import subjects as s
from services.runtime import credentials
from services.runtime.app import Guard, Refused, authorization_violation, permission_violation

EXIT_ERROR_REPLY = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4

_json = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()


class CliError(Exception):
    """A failure to report on stderr with an exit code."""

    def __init__(self, message: str, exit_code: int, *, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.body = body
        """The error reply's JSON body, for ``--json``."""


class Context(msgspec.Struct, kw_only=True):
    """What ``natsched`` reads of a context of the stock nats CLI (``nats context save NAME``)."""

    url: str = ""
    user: str = ""
    password: str = ""


_CONTEXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def context_path(name: str, env: Mapping[str, str] | None = None) -> Path:
    """Where the nats CLI keeps context ``name``: ``$XDG_CONFIG_HOME/nats/context/NAME.json``
    (``XDG_CONFIG_HOME`` defaults to ``~/.config``)."""
    if not _CONTEXT_NAME.match(name):
        raise CliError(f"bad context name {name!r}: letters, digits, '.', '_' or '-'", EXIT_USAGE)
    e = os.environ if env is None else env
    base = Path(e["XDG_CONFIG_HOME"]) if e.get("XDG_CONFIG_HOME") else Path(e.get("HOME") or Path.home()) / ".config"
    return base / "nats" / "context" / f"{name}.json"


def parse_context(name: str, raw: bytes) -> Context:
    """A context file's ``url``, ``user`` and ``password`` (its other fields are ignored)."""
    try:
        return msgspec.json.decode(raw, type=Context)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise CliError(f"nats context {name!r} is not a valid context file: {e}", EXIT_USAGE) from None


def load_context(name: str, env: Mapping[str, str] | None = None) -> Context:
    """Context ``name`` of the nats CLI, or a :class:`CliError` naming the file it looked for."""
    path = context_path(name, env)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CliError(
            f"no nats context {name!r}: cannot read {path} ({e.strerror}); `nats context ls` lists them", EXIT_USAGE
        ) from None
    return parse_context(name, raw)


@dataclass(frozen=True)
class Target:
    """Where and as whom to connect."""

    servers: str
    user: str | None
    password: str | None

    @property
    def inbox_prefix(self) -> str:
        """The user's reply inboxes: a role of nats.conf that may read its own only gets them."""
        return s.ROLE_INBOX_PREFIXES.get(self.user or "", s.DEFAULT_INBOX_PREFIX)

    @classmethod
    def resolve(
        cls,
        server: str | None,
        user: str | None,
        password: str | None,
        *,
        default_role: credentials.Role,
        env: Mapping[str, str] | None = None,
        context: Context | None = None,
    ) -> Target:
        """Flags win over a ``--context``, which wins over ``NATS_URL``/``NATS_USER``/``NATS_PASSWORD``;
        without any, the development credentials of ``default_role`` (or of the given user, when it is
        one of nats.conf's roles). A password comes with its user: one given by a flag does not take
        the context's or the environment's."""
        e = os.environ if env is None else env
        ctx = context or Context()
        servers = server or ctx.url or e.get("NATS_URL") or "nats://127.0.0.1:4222"
        if user is None and ctx.user:
            user, password = ctx.user, password if password is not None else (ctx.password or None)
        name = user or e.get("NATS_USER") or default_role
        if password is None and user is None:
            password = e.get("NATS_PASSWORD") or None
        if password is None and name in credentials.ROLES:
            password = credentials.password(name, e)
        return cls(servers=servers, user=name, password=password)


def denial(error: BaseException, target: Target) -> Refused | None:
    """The message for a permission NATS denies ``target``'s user (None: not a denial)."""
    denied = permission_violation(error)
    if denied is None:
        return None
    return Refused(
        f'NATS user "{target.user}" may not {denied[0]} {denied[1]}'
        " (connect as a user that may: --user/--password, --context or NATS_USER/NATS_PASSWORD)"
    )


async def connect(target: Target, *, reconnect: bool = False) -> Client:
    """Connect as ``target``; every :func:`request` on the connection then fails at once, with
    :data:`EXIT_DENIED`, when NATS reports a permission violation for it."""
    errors: list[Exception] = []
    guard = Guard(lambda e: denial(e, target))

    async def on_error(e: Exception) -> None:  # nats-py would log them; we report them ourselves
        errors.append(e)
        guard.report(e)

    try:
        # nats-py reads max_reconnect_attempts=0 as "forever", also for the first connect: try each
        # server twice, fail fast when nothing listens, then (long-running commands) reconnect forever
        nc = await nats.connect(
            servers=target.servers.split(","),
            user=target.user,
            password=target.password,
            name="natsched-cli",
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            inbox_prefix=target.inbox_prefix,
            error_cb=on_error,
        )
        nc.options["max_reconnect_attempts"] = -1 if reconnect else 0
        nc.options["allow_reconnect"] = reconnect
        _guards[nc] = guard
        return nc
    except Exception as e:
        text = str(e)
        if any(authorization_violation(x) for x in (e, *errors)):
            raise CliError(
                f'NATS at {target.servers} refused user "{target.user}": authorization violation, wrong user or'
                " password (set --user/--password, --context or NATS_USER/NATS_PASSWORD)",
                EXIT_DENIED,
            ) from None
        raise CliError(
            f"cannot connect to NATS at {target.servers} ({text or type(e).__name__}): is the system running?"
            " (`make run` starts it; --server or NATS_URL points elsewhere)",
            EXIT_UNREACHABLE,
        ) from None


_guards: weakref.WeakKeyDictionary[Client, Guard] = weakref.WeakKeyDictionary()
"""Each connection's watch on permission violations."""


async def ensure_allowed(nc: Client) -> None:
    """Raise the first permission NATS denied on ``nc`` so far as a :class:`CliError`
    (:data:`EXIT_DENIED`). The server answers a ping after reporting what it denied before it,
    but nats-py (2.16) writes a flush's PING straight to the socket, ahead of the subscriptions
    and publications still in its buffer: the second flush's ping follows them."""
    await nc.flush()
    await nc.flush()
    guard = _guards.get(nc)
    if guard is not None and guard.refused.done():
        raise CliError(guard.refused.result().message, EXIT_DENIED)


def error_of(headers: Mapping[str, str] | None, data: bytes) -> CliError | None:
    """The ADR-32 error reply as a CliError, or None for a success."""
    if not headers or s.ERROR_CODE_HEADER not in headers:
        return None
    code = headers.get(s.ERROR_CODE_HEADER, "")
    message = headers.get(s.ERROR_HEADER, "")
    body: Any = None
    try:
        body = _json.decode(data)
        detail = body["error"]
        message = detail.get("message") or message
        field = detail.get("field")
        job_id = detail.get("job_id")
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        field = job_id = None
    text = f"error {code}: {message}"
    if field:
        text += f" (field: {field})"
    if job_id:
        text += f" (job_id: {job_id})"
    return CliError(text, EXIT_ERROR_REPLY, body=body)


async def request(nc: Client, subject: str, body: Any, *, timeout: float, headers: dict[str, str] | None = None) -> Any:
    """Ask ``subject`` and return the decoded JSON reply, or raise :class:`CliError`."""
    payload = body if isinstance(body, bytes) else _enc.encode(body)
    guard = _guards.get(nc)
    asking = nc.request(subject, payload, timeout=timeout, headers=headers)
    try:
        msg = await (guard.check(asking) if guard else asking)
    except Refused as e:
        raise CliError(e.message, EXIT_DENIED) from None
    except nats.errors.NoRespondersError:
        raise CliError(
            f"no service answers {subject}: is the system running? (`make run` starts it;"
            " `nats micro ls` lists the services that are up)",
            EXIT_UNREACHABLE,
        ) from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise CliError(
            f"no answer to {subject} within {timeout:g} s (overloaded, or not allowed for this user?)",
            EXIT_UNREACHABLE,
        ) from None
    err = error_of(msg.headers, msg.data)
    if err is not None:
        raise err
    try:
        return _json.decode(msg.data)
    except msgspec.DecodeError:
        raise CliError(f"{subject} answered something that is not JSON: {msg.data[:200]!r}", 1) from None
