"""Start the real system for a benchmark or a chaos run, as ``make run`` does, and measure its processes.

``system(...)`` runs one nats-server by default; ``system(..., nats_servers=3)`` runs a
routed 3-node cluster instead (``services.devstack.cluster``, as ``make cluster`` does):
the services get every client URL in ``NATS_URL`` and ``STREAM_REPLICAS=3``, and the
streams are declared with 3 replicas before any service starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client

from services.devstack import (
    Moto,
    NatsServer,
    Postgres,
    ServiceProcess,
    database_url_from_env,
    spawn_service,
    supervisor,
)
from services.devstack.cluster import NatsCluster
from services.runtime import credentials
from services.runtime.streams import ensure_streams
from tests.support.procs import present, proc_usage, tree_usage
from tests.support.servers import REPO, nats_auth, wait_for_services

SERVICES = supervisor.SERVICES


def tuned_config(tmp: Path, settings: Mapping[str, float]) -> Path:
    """``defaults.toml`` with some of its settings changed (e.g. ``node_lost_s``), written to ``tmp``."""
    text = (REPO / "services" / "runtime" / "defaults.toml").read_text()
    for key, value in settings.items():
        text, n = re.subn(rf"^{re.escape(key)} = [^#\n]*", f"{key} = {value} ", text, flags=re.M)
        if n != 1:
            raise KeyError(f"{key} is not a setting of defaults.toml")
    path = tmp / "scheduler.toml"
    path.write_text(text)
    return path


def discard(tmp: Path) -> None:
    """Remove a run's scratch folder (its PostgreSQL and JetStream data: up to 1.6 GB per
    run), unless ``BENCH_KEEP`` is set to look at the logs afterwards."""
    if os.environ.get("BENCH_KEEP"):
        sys.stderr.write(f"kept {tmp}\n")
        return
    shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class System:
    nats: NatsServer
    """The (first) nats-server."""
    env: dict[str, str]
    procs: dict[str, list[ServiceProcess]] = field(default_factory=dict)
    tmp: Path = Path()
    pg: Postgres | None = None
    moto: Moto | None = None
    cluster: NatsCluster | None = None
    """The 3-node cluster when ``system(..., nats_servers=3)``; ``nats`` is its first server."""
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def servers(self) -> list[NatsServer]:
        return list(self.cluster.servers) if self.cluster else [self.nats]

    def server_named(self, name: str) -> NatsServer:
        """The server whose ``server_name`` is ``name`` (e.g. a stream's leader from ``stream_info``)."""
        for srv in self.servers:
            args = srv.extra_args
            if "--name" in args and args[args.index("--name") + 1] == name:
                return srv
        raise KeyError(name)

    def spawn(self, name: str) -> ServiceProcess:
        """Start one more instance of a service (e.g. to restart a killed one)."""
        ps = self.procs.setdefault(name, [])
        env = {**self.env, **self.service_env.get(name, {})}
        p = spawn_service(name, env, log_path=self.tmp / f"{name}-{len(ps)}.log")
        ps.append(p)
        return p

    @property
    def fleets(self) -> list[ServiceProcess]:
        """The simulated fleet's processes (``system(..., sim_fleets=N)``): stopping one silences its nodes."""
        return self.procs.get("simnodes", [])

    def usage(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        pids = {f"{n}#{i}": p.pid for n, ps in self.procs.items() for i, p in enumerate(ps)}
        for i, srv in enumerate(self.servers):
            if srv.pid:
                pids["nats-server" if len(self.servers) == 1 else f"nats-server#{i + 1}"] = srv.pid
        for label, pid in pids.items():
            try:
                cpu, rss = proc_usage(pid)
            except OSError:
                continue
            out[label] = {"cpu_s": round(cpu, 2), "peak_rss_mb": round(rss / 2**20, 1)}
        if self.pg is not None and self.pg.pid:
            with contextlib.suppress(OSError):
                cpu, rss = tree_usage(self.pg.pid)
                out["postgres"] = {"cpu_s": round(cpu, 2), "peak_rss_mb": round(rss / 2**20, 1)}
        return out


@dataclass
class Servers:
    """A nats-server with the streams declared and PostgreSQL, no services (``servers_only``)."""

    nats: NatsServer
    nc: Client
    """An admin connection."""
    admin_url: str
    """PostgreSQL's admin DSN (``DATABASE_URL``'s server, else one of our own)."""
    env: dict[str, str]
    """The environment of a service process talking to this server."""
    tmp: Path
    pg: Postgres | None = None


@asynccontextmanager
async def servers_only(name: str) -> AsyncIterator[Servers]:
    """nats-server (the repo's nats.conf) and PostgreSQL for a benchmark that starts its own
    service processes (one per run, each on a fresh database); stopped and removed on exit."""
    credentials.apply_server_defaults()
    tmp = Path(tempfile.mkdtemp(prefix=f"natsched-bench-{name}-"))
    server = NatsServer(config=REPO / "nats.conf", store_dir=tmp / "js", log_dir=tmp)
    server.start()
    pg: Postgres | None = None
    try:
        admin_url = database_url_from_env()
        if not admin_url:
            pg = Postgres(tmp / "pg")
            pg.start()
            admin_url = pg.dsn
        env = {"NATS_URL": server.url, "LOG_FORMAT": "json", "LOG_LEVEL": "warning"}
        env.update(credentials.client_environ("services"))
        nc = await nats.connect(server.url, pending_size=256 * 1024 * 1024, **nats_auth("admin"))
        try:
            await ensure_streams(nc.jetstream(timeout=30))
            yield Servers(server, nc, admin_url, env, tmp, pg)
        finally:
            await nc.close()
    finally:
        server.stop()
        if pg is not None:
            pg.stop()
        discard(tmp)


async def _declare_streams(urls: str, timeout: float = 60) -> None:
    """Create the streams with 3 replicas once the cluster's JetStream meta leader is elected."""
    nc = await nats.connect(urls.split(","), **nats_auth("admin"))
    try:
        js = nc.jetstream(timeout=5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await ensure_streams(js, replicas=3)
                return
            except (nats.errors.Error, TimeoutError) as e:  # no meta leader yet
                if loop.time() > deadline:
                    raise TimeoutError(f"cluster never accepted the streams: {e!r}") from e
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


@asynccontextmanager
async def system(
    services: Sequence[str] = SERVICES,
    *,
    instances: Mapping[str, int] | None = None,
    sim_nodes: int = 0,
    sim_interval: float = 5.0,
    with_postgres: bool = True,
    with_moto: bool = True,
    env: Mapping[str, str] | None = None,
    service_env: Mapping[str, Mapping[str, str]] | None = None,
    nats_servers: int = 1,
    sim_fleets: int = 1,
    settings: Mapping[str, float] | None = None,
) -> AsyncIterator[tuple[System, Client]]:
    """nats-server (+ PostgreSQL + moto) and the services, each a real process; stopped on exit.

    ``nats_servers=3``: a routed 3-node NATS cluster with streams of 3 replicas instead of one
    server. ``service_env``: extra environment for one service's instances only (e.g. a log level).
    ``sim_fleets=N``: the ``sim_nodes`` as N simnodes processes of equal size, node ids
    ``f<g>-000``... (``System.fleets[g]``), so a part of the fleet can be silenced at once.
    ``settings``: keys of ``defaults.toml`` to change (e.g. ``{"node_lost_s": 6}``).
    """
    if nats_servers not in (1, 3):
        raise ValueError("nats_servers must be 1 or 3")
    credentials.apply_server_defaults()
    tmp = Path(tempfile.mkdtemp(prefix="natsched-bench-"))
    cluster: NatsCluster | None = None
    if nats_servers == 1:
        server = NatsServer(config=REPO / "nats.conf", store_dir=tmp / "js", log_dir=tmp)
        server.start()
        nats_url = server.url
    else:
        cluster = NatsCluster(tmp / "cluster", nats_servers, config=REPO / "nats.conf")
        cluster.start()
        server = cluster.servers[0]
        nats_url = cluster.url
    pg: Postgres | None = None
    moto: Moto | None = None
    base = {
        "NATS_URL": nats_url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "warning",
        **credentials.client_environ("services"),
        **({"STREAM_REPLICAS": "3"} if cluster else {}),
        **(env or {}),
    }
    if settings:
        base["SCHEDULER_CONFIG"] = str(tuned_config(tmp, settings))
    names = [n for n in services if present(n)]
    try:
        if cluster:
            await _declare_streams(nats_url)
        if with_postgres and "metadata" in names:
            url = database_url_from_env()
            if not url:
                pg = Postgres(tmp / "pg")
                pg.start()
                url = pg.dsn
            base["DATABASE_URL"] = url
        if with_moto and ({"provisioner", "teardown"} & set(names)):
            moto = Moto(log_dir=tmp)
            moto.start()
            base.update(
                AWS_ENDPOINT_URL=moto.endpoint_url,
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                AWS_DEFAULT_REGION="eu-central-1",
            )
        sysm = System(
            nats=server,
            env=base,
            tmp=tmp,
            pg=pg,
            moto=moto,
            cluster=cluster,
            service_env={k: dict(v) for k, v in (service_env or {}).items()},
        )
        for n in names:
            for _ in range((instances or {}).get(n, 1)):
                sysm.spawn(n)
        for g in range(sim_fleets if sim_nodes else 0):
            part = ["--prefix", f"f{g}", "--seed", str(42 + g)] if sim_fleets > 1 else []
            sysm.procs.setdefault("simnodes", []).append(
                spawn_service(
                    "simnodes",
                    base,
                    ["--count", str(sim_nodes // sim_fleets), "--interval", str(sim_interval), *part],
                    log_path=tmp / f"simnodes-{g}.log",
                )
            )
        nc = await nats.connect(
            nats_url.split(","),
            pending_size=256 * 1024 * 1024,
            **nats_auth("admin"),
            max_reconnect_attempts=240,  # ~60 s of outage (a restarted server, a new stream leader)
            reconnect_time_wait=0.25,
        )
        try:
            await wait_for_services(nc, names, timeout=60)
            yield sysm, nc
        finally:
            await nc.close()
            for ps in sysm.procs.values():
                for p in ps:
                    p.stop()
                    p.keep_log()  # e.g. a stats line written at shutdown, read once system() returned
    finally:
        if moto:
            moto.stop()
        if pg:
            pg.stop()
        if cluster:
            cluster.stop()
        else:
            server.stop()
        discard(tmp)
