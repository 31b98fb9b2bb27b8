"""The read-only web console: static files and a generated ``config.json``; the page itself talks to
nats-server over its websocket listener as the ``console`` user (docs/CONSOLE.md)."""

from services.console.config import PageConfig, page_config
from services.console.server import STATIC_DIR, ConsoleServer

__all__ = ["STATIC_DIR", "ConsoleServer", "PageConfig", "page_config"]
