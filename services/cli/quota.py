"""``natsched quota [TENANT]``, ``natsched quota set TENANT --cpu X ...`` and ``natsched usage [TENANT]``.

The bodies are built as the contract's Structs (``schemas.replies``), so a bad tenant name or a
negative limit is refused here with the field named, before anything is sent.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client

from schemas import replies
from schemas import subjects as s
from services.cli import render
from services.cli.client import EXIT_USAGE, CliError, request
from services.cli.output import Io

_T = TypeVar("_T")

LIMIT_FLAGS: tuple[str, ...] = ("cpu", "memory_mb", "gpu", "jobs", "instances", "cpu_hours")
"""The ``quota set`` flags, named as the fields of ``schemas.replies.Quota``."""


@dataclass(frozen=True)
class QuotaCall:
    """What ``natsched quota ...`` asks: the subject and its body."""

    subject: str
    body: msgspec.Struct


def _struct(kind: type[_T], value: dict[str, Any]) -> _T:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as e:
        raise CliError(f"bad quota request: {e}", EXIT_USAGE) from None


def tenant_request(tenant: str | None) -> replies.QuotaRequest:
    """The body of ``quota.get`` and ``tenant.usage``: a tenant, or none (the asker's own)."""
    return _struct(replies.QuotaRequest, {"tenant": tenant} if tenant else {})


def quota_call(a: argparse.Namespace) -> QuotaCall:
    """``quota [TENANT]`` is ``quota.get``; ``quota set TENANT [limits]`` is ``quota.set`` (a limit
    not given is unlimited). Limits without ``set``, or ``set`` without one tenant, are refused."""
    words: list[str] = list(a.words)
    limits = {name: getattr(a, name) for name in LIMIT_FLAGS if getattr(a, name) is not None}
    if words[:1] == ["set"]:
        if len(words) != 2:
            raise CliError("usage: natsched quota set TENANT [--cpu X] [--memory-mb N] ...: one tenant", EXIT_USAGE)
        body = _struct(replies.QuotaSetRequest, {"tenant": words[1], "quota": limits})
        return QuotaCall(s.QUOTA_SET, body)
    if limits:
        flags = ", ".join("--" + name.replace("_", "-") for name in limits)
        raise CliError(f"{flags}: only with `natsched quota set TENANT`", EXIT_USAGE)
    if len(words) > 1:
        raise CliError("usage: natsched quota [TENANT] or natsched quota set TENANT [limits]", EXIT_USAGE)
    return QuotaCall(s.QUOTA_GET, tenant_request(words[0] if words else None))


async def cmd_quota(a: argparse.Namespace, nc: Client, io: Io) -> None:
    call = quota_call(a)
    reply = await request(nc, call.subject, msgspec.json.encode(call.body), timeout=a.timeout)
    if io.as_json:
        io.json(reply)
    else:
        io.text(render.quota_text(reply, io.style))


async def cmd_usage(a: argparse.Namespace, nc: Client, io: Io) -> None:
    body = msgspec.json.encode(tenant_request(a.tenant))
    reply = await request(nc, s.TENANT_USAGE, body, timeout=a.timeout)
    if io.as_json:
        io.json(reply)
    else:
        io.text(render.usage_text(reply, io.style))
