"""A 3-node NATS cluster (routes, clustered JetStream) from the repo's nats.conf, without Docker.

``python -m services.devstack.cluster`` (what ``make cluster`` calls) runs three nats-servers on
127.0.0.1, client ports 4222-4224 (``NATS_PORT``), monitoring 8222-8224 (``NATS_MONITOR_PORT``),
routes 6222-6224 (``NATS_CLUSTER_PORT``), data in ``$DATA_DIR/cluster/nats-<i>`` (``.data``), until
Ctrl-C. Point the services at it with the printed ``NATS_URL`` and ``STREAM_REPLICAS=3``.
Each server is ``nats-server -c nats.conf`` plus command-line flags for its name, ports and routes,
so the users and limits are exactly those of a single server.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from services.devstack._util import Managed
from services.devstack.nats import NatsServer
from services.devstack.ports import free_port
from services.devstack.procs import REPO_ROOT
from services.runtime import credentials

CLUSTER_NAME = "natsched"


class NatsCluster(Managed):
    """``size`` nats-servers with routes to each other; ports default to free ports."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        *,
        config: Path = REPO_ROOT / "nats.conf",
        ports: list[int] | None = None,
        monitor_ports: list[int] | None = None,
        route_ports: list[int] | None = None,
    ) -> None:
        credentials.apply_server_defaults()  # the servers inherit this process's environment
        self.base_dir = base_dir.absolute()
        route_ports = route_ports or [free_port() for _ in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in route_ports)
        self.servers = [
            NatsServer(
                config,
                ports[i] if ports else None,
                monitor_ports[i] if monitor_ports else None,
                store_dir=self.base_dir / f"nats-{i + 1}" / "store",
                log_dir=self.base_dir / f"nats-{i + 1}",
                extra_args=(
                    *("--name", f"{CLUSTER_NAME}-{i + 1}", "--cluster_name", CLUSTER_NAME),
                    *("--cluster", f"nats://127.0.0.1:{route_ports[i]}", "--routes", routes),
                ),
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """Every server's client URL, comma-separated (what ``NATS_URL`` takes)."""
        return ",".join(server.url for server in self.servers)

    def start(self) -> None:
        try:
            for server in self.servers:
                server.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _ports(variable: str, default: int, size: int) -> list[int]:
    first = int(os.environ.get(variable, str(default)))
    return [first + i for i in range(size)]


def main() -> int:
    size = 3
    try:
        cluster = NatsCluster(
            Path(os.environ.get("DATA_DIR", ".data")) / "cluster",
            size,
            ports=_ports("NATS_PORT", 4222, size),
            monitor_ports=_ports("NATS_MONITOR_PORT", 8222, size),
            route_ports=_ports("NATS_CLUSTER_PORT", 6222, size),
        )
    except ValueError as err:
        sys.stderr.write(f"cluster: {err}\n")
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.start()
    except (RuntimeError, FileNotFoundError) as err:
        sys.stderr.write(f"cluster: {err}\n")
        return 1
    lines = [
        f"NATS cluster {CLUSTER_NAME!r} is up: {len(cluster.servers)} servers, JetStream replicated",
        *(f"  {s.url}   monitor {s.monitor_url}   logs {s.log_path}" for s in cluster.servers),
        "run services against it with",
        f"  NATS_URL={cluster.url} STREAM_REPLICAS=3 NATS_USER=services \\",
        f"  NATS_PASSWORD={credentials.password('services')} python -m services.<name>",
        "Ctrl-C stops the cluster",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    stop.wait()
    cluster.stop()
    sys.stdout.write("cluster stopped\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
