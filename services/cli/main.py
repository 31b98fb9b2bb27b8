"""``natsched``: submit, plan, scale, get, list, cancel, complete, nodes, drain, undrain, watch,
quota, usage, simulate-nodes, ping.

Tables and colours on a terminal, plain JSON with ``--json``. Connects to ``NATS_URL``
as ``NATS_USER``/``NATS_PASSWORD`` (or ``--server``/``--user``/``--password``, or a nats CLI
``--context``); without them, as the development user ``manager`` (``node`` for
``simulate-nodes``, ``monitor`` for ``ping``, ``admin`` for ``quota set``) of nats.conf. The
parser is in :mod:`services.cli.args`, the request-reply commands in :mod:`services.cli.commands`
(quotas in :mod:`services.cli.quota`), the long-running ones in :mod:`services.cli.live`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping
from typing import IO

from services.cli import jobspec
from services.cli.args import parser
from services.cli.client import EXIT_UNREACHABLE, CliError, Target, connect, load_context
from services.cli.commands import (
    cmd_cancel,
    cmd_complete,
    cmd_drain,
    cmd_get,
    cmd_list,
    cmd_nodes,
    cmd_submit,
    cmd_undrain,
)
from services.cli.live import cmd_ping, cmd_simulate_nodes, cmd_watch
from services.cli.output import Command, Io
from services.cli.plan import cmd_plan, cmd_scale
from services.cli.quota import cmd_quota, cmd_usage
from services.runtime.credentials import Role

COMMANDS: dict[str, tuple[Command, Role]] = {
    "submit": (cmd_submit, "manager"),
    "plan": (cmd_plan, "manager"),
    "scale": (cmd_scale, "manager"),
    "get": (cmd_get, "manager"),
    "list": (cmd_list, "manager"),
    "cancel": (cmd_cancel, "manager"),
    "complete": (cmd_complete, "manager"),
    "nodes": (cmd_nodes, "manager"),
    "drain": (cmd_drain, "manager"),
    "undrain": (cmd_undrain, "manager"),
    "watch": (cmd_watch, "manager"),
    "quota": (cmd_quota, "manager"),
    "usage": (cmd_usage, "manager"),
    "simulate-nodes": (cmd_simulate_nodes, "node"),
    "ping": (cmd_ping, "monitor"),
}
"""Each command and the development user it connects as by default."""


def default_role(a: argparse.Namespace) -> Role:
    """The development user a command connects as without credentials: ``quota set`` is the
    operators' (``admin``), the rest as in :data:`COMMANDS`."""
    if a.command == "quota" and a.words[:1] == ["set"]:
        return "admin"
    return COMMANDS[a.command][1]


async def run(
    argv: list[str],
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Parse ``argv`` and run the command; returns the exit code (argparse exits 2 on bad usage)."""
    out = out or sys.stdout
    err = err or sys.stderr
    e = os.environ if env is None else env
    a = parser().parse_args(argv)
    if a.timeout is None:  # placement.request answers 504 itself after its own wait (5 s by default)
        a.timeout = 15.0 if getattr(a, "wait", False) else 1.0 if a.command == "ping" else 5.0
    command = COMMANDS[a.command][0]
    colour = not a.no_color and not a.json and "NO_COLOR" not in e and out.isatty()
    io = Io(out, err, as_json=a.json, colour=colour)
    try:
        context = load_context(a.context, e) if a.context else None
        target = Target.resolve(a.server, a.user, a.password, default_role=default_role(a), env=e, context=context)
        nc = await connect(target, reconnect=a.command in ("watch", "simulate-nodes"))
        try:
            await command(a, nc, io)
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()
    except CliError as ex:
        if a.json and ex.body is not None:
            io.json(ex.body)
        err.write(f"natsched: {ex.message}\n")
        return ex.exit_code
    except (jobspec.SpecError, ValueError) as ex:
        err.write(f"natsched: {ex}\n")
        return 2
    except ConnectionError as ex:
        err.write(f"natsched: lost the connection to NATS: {ex}\n")
        return EXIT_UNREACHABLE
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``natsched`` console script."""
    try:
        return asyncio.run(run(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return 130


__all__ = ["COMMANDS", "main", "parser", "run"]
