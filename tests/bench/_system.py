"""Start the real system for a benchmark, as ``make run`` does, and measure its processes."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
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
    credentials,
    database_url_from_env,
    spawn_service,
)

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "intake", "placement", "metadata", "provisioner", "teardown")
_TICK = os.sysconf("SC_CLK_TCK")


def present(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"services.{name}.__main__") is not None
    except ModuleNotFoundError:
        return False


def proc_usage(pid: int) -> tuple[float, int]:
    """(cpu seconds, peak RSS bytes) of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    cpu = (int(parts[11]) + int(parts[12])) / _TICK
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cpu, peak


@dataclass
class System:
    nats: NatsServer
    env: dict[str, str]
    procs: dict[str, list[ServiceProcess]] = field(default_factory=dict)
    tmp: Path = Path()
    pg: Postgres | None = None
    moto: Moto | None = None

    def spawn(self, name: str) -> ServiceProcess:
        """Start one more instance of a service (e.g. to restart a killed one)."""
        ps = self.procs.setdefault(name, [])
        p = spawn_service(name, self.env, log_path=self.tmp / f"{name}-{len(ps)}.log")
        ps.append(p)
        return p

    def usage(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        pids = {f"{n}#{i}": p.pid for n, ps in self.procs.items() for i, p in enumerate(ps)}
        if self.nats.pid:
            pids["nats-server"] = self.nats.pid
        for label, pid in pids.items():
            try:
                cpu, rss = proc_usage(pid)
            except OSError:
                continue
            out[label] = {"cpu_s": round(cpu, 2), "peak_rss_mb": round(rss / 2**20, 1)}
        return out


async def wait_up(nc: Client, names: Sequence[str], timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for name in names:
        while True:
            try:
                msg = await nc.request(f"$SRV.PING.{name}", b"", timeout=0.5)
                if json.loads(msg.data).get("name") == name:
                    break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"{name} did not come up")
            await asyncio.sleep(0.1)


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
) -> AsyncIterator[tuple[System, Client]]:
    """nats-server (+ PostgreSQL + moto) and the services, each a real process; stopped on exit."""
    credentials.apply_server_defaults()
    tmp = Path(tempfile.mkdtemp(prefix="natsched-bench-"))
    server = NatsServer(config=REPO / "nats.conf", store_dir=tmp / "js", log_dir=tmp)
    server.start()
    pg: Postgres | None = None
    moto: Moto | None = None
    base = {
        "NATS_URL": server.url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "warning",
        **credentials.client_environ("services"),
        **(env or {}),
    }
    names = [n for n in services if present(n)]
    try:
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
        sysm = System(nats=server, env=base, tmp=tmp, pg=pg, moto=moto)
        for n in names:
            sysm.procs[n] = [
                spawn_service(n, base, log_path=tmp / f"{n}-{i}.log") for i in range((instances or {}).get(n, 1))
            ]
        if sim_nodes:
            sysm.procs["simnodes"] = [
                spawn_service(
                    "simnodes",
                    base,
                    ["--count", str(sim_nodes), "--interval", str(sim_interval)],
                    log_path=tmp / "simnodes.log",
                )
            ]
        nc = await nats.connect(
            server.url, pending_size=256 * 1024 * 1024, user="admin", password=credentials.password("admin")
        )
        try:
            await wait_up(nc, names)
            yield sysm, nc
        finally:
            await nc.close()
            for ps in sysm.procs.values():
                for p in ps:
                    p.stop()
    finally:
        if moto:
            moto.stop()
        if pg:
            pg.stop()
        server.stop()
