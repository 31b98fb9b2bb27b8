"""``python -m services.console [--port 8090] [--nats ws://127.0.0.1:9222]``: serve the console page alone,
against a nats-server started elsewhere (``make run`` starts it itself). The password is
``NATS_CONSOLE_PASSWORD`` (development default ``dev-console``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from services.console.config import from_environment
from services.console.server import ConsoleServer


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m services.console", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("CONSOLE_PORT", "8090")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--nats", default=os.environ.get("NATS_WS_URL", "ws://127.0.0.1:9222"), help="websocket URL")
    a = parser.parse_args()
    server = ConsoleServer(from_environment((a.nats,)), a.port, a.host)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    sys.stdout.write(f"console {server.url} (NATS {a.nats}, user console); Ctrl-C stops it\n")
    sys.stdout.flush()
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
