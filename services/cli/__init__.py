"""``natsched``: the scheduler's command line, for people without the nats CLI."""

from services.cli.main import main

__all__ = ["main"]
