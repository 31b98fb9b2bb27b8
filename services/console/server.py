"""The console's only server: static files plus ``/config.json``, stdlib ``http.server`` in a thread.

It has no API and no state; the page talks to nats-server itself. Bound to 127.0.0.1 by default
(``config.json`` carries the console user's password).
"""

from __future__ import annotations

import os
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

STATIC_DIR = Path(__file__).with_name("static")
CONFIG_PATH = "/config.json"


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript", ".mjs": "text/javascript"}

    def __init__(self, *args: Any, config: bytes, log: Path, **kwargs: Any) -> None:
        self._config, self._log = config, log
        super().__init__(*args, **kwargs)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")  # a rebuilt page or a new config is seen at once
        super().end_headers()

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != CONFIG_PATH:
            super().do_GET()
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self._config)))
        self.end_headers()
        self.wfile.write(self._config)

    def log_message(self, format: str, *args: Any) -> None:
        with self._log.open("a") as f:
            f.write(f"{self.address_string()} {format % args}\n")


class ConsoleServer:
    """Serves ``static_dir`` and ``config`` (the bytes of ``/config.json``) on ``host:port`` (0: any free
    port, chosen when binding). ``start()``/``stop()`` as the dev stack's other servers; requests are
    logged to ``log_path``."""

    def __init__(
        self,
        config: bytes,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        static_dir: Path = STATIC_DIR,
        log_dir: Path | None = None,
    ) -> None:
        self.config, self.host, self.port, self.static_dir = config, host, port, static_dir
        self.log_path = log_dir.absolute() / "console.log" if log_dir is not None else Path(os.devnull)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> None:
        if self._httpd is not None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        handler = partial(_Handler, config=self.config, log=self.log_path, directory=str(self.static_dir))
        self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="console-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd, self._thread = None, None

    def __enter__(self) -> ConsoleServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
