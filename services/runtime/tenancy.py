"""Whose request is this? The tenant of a request (§8.4), from where it arrived.

A tenant account imports ``sched.tenant.<request>`` under the plain name ``<request>``;
nats-server stamps ``Nats-Request-Info`` (JSON, ``acc`` = the caller's account) on a request
crossing accounts. Only an import reaches ``sched.tenant.*`` (nats.conf), so the header is
read there and only there: on the plain subjects a client of the scheduler's own account
could set it itself, so it is never read, and the tenant is ``default``.
"""

from __future__ import annotations

import msgspec
from nats.aio.msg import Msg

from schemas import subjects as s
from services.runtime.micro import RequestError

_TENANT_SUBJECT = s.TENANT_REQUEST_PREFIX + "."


class _RequestInfo(msgspec.Struct):
    acc: str


_decode_info = msgspec.json.Decoder(_RequestInfo).decode


def from_tenant_import(msg: Msg) -> bool:
    """Whether ``msg`` came through a tenant account's import (``sched.tenant.<request>``)."""
    return msg.subject.startswith(_TENANT_SUBJECT)


def tenant_of(msg: Msg) -> str:
    """The tenant of request ``msg``: its account's (lower-cased) on ``sched.tenant.*``, else ``default``.

    A request on ``sched.tenant.*`` without a readable ``Nats-Request-Info`` did not come
    through an import (a misconfigured account): refused with 403 rather than guessed."""
    if not from_tenant_import(msg):
        return s.DEFAULT_TENANT
    raw = (msg.headers or {}).get(s.REQUEST_INFO_HEADER)
    try:
        account = _decode_info(raw).acc if raw else ""
    except (msgspec.DecodeError, msgspec.ValidationError):
        account = ""
    if not account:
        raise RequestError(403, "tenant request without the server's Nats-Request-Info: not through an import")
    return s.tenant_of_account(account)


def tenant_subjects(subject: str) -> tuple[str, str]:
    """The plain subject of a request and the one tenants reach it on."""
    return subject, s.tenant_request_subject(subject)
