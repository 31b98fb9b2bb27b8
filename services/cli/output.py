"""Where a command writes, and how: JSON lines with ``--json``, else text with optional colours."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import IO, Any

import msgspec
from nats.aio.client import Client

from services.cli import render

_enc = msgspec.json.Encoder()


class Io:
    """Where a command writes, and how (JSON or text with optional colours)."""

    def __init__(self, out: IO[str], err: IO[str], *, as_json: bool, colour: bool) -> None:
        self.out, self.err, self.as_json = out, err, as_json
        self.style = render.Style(colour)

    def json(self, value: Any) -> None:
        self.out.write(_enc.encode(value).decode() + "\n")
        self.out.flush()

    def text(self, text: str) -> None:
        self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """Progress and hints: on stderr, so stdout stays parseable."""
        self.err.write(text + "\n")
        self.err.flush()


Command = Callable[[argparse.Namespace, Client, Io], Awaitable[None]]
"""A command: its parsed arguments, a connection, where to write."""

__all__ = ["Command", "Io"]
