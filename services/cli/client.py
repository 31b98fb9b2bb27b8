"""Connecting and asking: NATS errors turned into messages a person can act on.

Exit codes: 0 done, 1 the service answered with an error, 2 bad usage (argparse),
3 the system is not reachable (no connection, no responders, no answer in time),
4 NATS refused the credentials or a permission.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client

from schemas import subjects as s
from services.runtime import credentials

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


@dataclass(frozen=True)
class Target:
    """Where and as whom to connect."""

    servers: str
    user: str | None
    password: str | None

    @classmethod
    def resolve(
        cls,
        server: str | None,
        user: str | None,
        password: str | None,
        *,
        default_role: credentials.Role,
        env: Mapping[str, str] | None = None,
    ) -> Target:
        """Flags win over ``NATS_URL``/``NATS_USER``/``NATS_PASSWORD``; without either, the development
        credentials of ``default_role`` (or of the given user, when it is one of nats.conf's roles)."""
        e = os.environ if env is None else env
        servers = server or e.get("NATS_URL") or "nats://127.0.0.1:4222"
        name = user or e.get("NATS_USER") or default_role
        if password is None and user is None:
            password = e.get("NATS_PASSWORD") or None
        if password is None and name in credentials.ROLES:
            password = credentials.password(name, e)
        return cls(servers=servers, user=name, password=password)


async def connect(target: Target, *, reconnect: bool = False) -> Client:
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:  # nats-py would log them; we report them ourselves
        errors.append(e)

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
            error_cb=on_error,
        )
        nc.options["max_reconnect_attempts"] = -1 if reconnect else 0
        nc.options["allow_reconnect"] = reconnect
        return nc
    except Exception as e:
        text = str(e)
        if any("authorization violation" in str(x).lower() for x in (e, *errors)):
            raise CliError(
                f"NATS at {target.servers} refused user {target.user!r}: wrong user or password"
                " (set --user/--password or NATS_USER/NATS_PASSWORD)",
                EXIT_DENIED,
            ) from None
        raise CliError(
            f"cannot connect to NATS at {target.servers} ({text or type(e).__name__}): is the system running?"
            " (`make run` starts it; --server or NATS_URL points elsewhere)",
            EXIT_UNREACHABLE,
        ) from None


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
    try:
        msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
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
