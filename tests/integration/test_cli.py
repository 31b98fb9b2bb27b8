"""``natsched`` against real servers and service processes, run in-process as a user would type it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from schemas import subjects as s
from services.cli.main import run
from services.devstack import NatsServer
from tests.support.api import METADATA_TOML
from tests.support.cli import Output
from tests.support.servers import Spawn
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def cli(server: NatsServer, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = Output(), Output()
    code = await run([*argv, "--server", server.url], out=out, err=err, env=env or {})
    return code, out.getvalue(), err.getvalue()


async def stored(nc: Client, stream: str, expected: int, timeout: float = 10.0) -> int:
    """The stream's message count once it reached ``expected`` (bounded wait)."""
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (n := (await js.stream_info(stream)).state.messages) < expected:
        assert loop.time() < deadline, n
        await asyncio.sleep(0.05)
    return int(n)


async def test_simulate_nodes_then_submit_and_wait_for_the_decision(
    nc: Client, services: Spawn, nats_server: NatsServer
) -> None:
    await services("gateway", "intake", "placement")
    code, out, _ = await cli(nats_server, "simulate-nodes", "6", "--rounds", "1", "--prefix", "sim", "--json")
    assert code == 0 and json.loads(out) == {"round": 1, "nodes": 6}  # published as the `node` user
    assert await stored(nc, s.NODES.name, 6) == 6  # one per node (the stream keeps the last)
    code, out, err = await cli(
        nats_server, "submit", "--name", "demo", "--replicas", "2", "--cpu", "0.5", "--memory-mb", "256", "--wait",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    decided = json.loads(out)
    assert decided["type"] == s.PLACEMENT_DECIDED
    assert all(a["node_id"].startswith("sim-") for a in decided["assignments"])


async def test_watch_follows_a_submitted_job(services: Spawn, nats_server: NatsServer) -> None:
    await services("gateway", "intake")
    out, err = Output(), Output()
    watch = asyncio.create_task(
        run(["watch", "--count", "2", "--json", "--server", nats_server.url], out=out, err=err, env={})
    )
    await err.wait_for("watching every job")
    code, submitted, _ = await cli(nats_server, "submit", "--name", "watched")
    assert code == 0
    job_id = submitted.split()[0]
    assert await asyncio.wait_for(watch, 10) == 0
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["type"], e["job_id"]) for e in events] == [(s.JOB_SUBMITTED, job_id), (s.JOB_ACCEPTED, job_id)]


async def test_submit_from_a_toml_file_with_flags_winning(
    services: Spawn, nats_server: NatsServer, tmp_path: Path
) -> None:
    await services("gateway")
    spec = tmp_path / "job.toml"
    spec.write_text('name = "from-file"\nreplicas = 3\n[resources]\ncpu = 2\n')
    code, out, err = await cli(nats_server, "submit", "-f", str(spec), "--replicas", "1", "--request-id", "r-1")
    again = await cli(nats_server, "submit", "-f", str(spec), "--request-id", "r-1")
    assert code == 0 and again[0] == 0, err
    assert out.split()[0] == again[1].split()[0]  # same request id, same job


async def test_error_reply_is_explained(services: Spawn, nats_server: NatsServer) -> None:
    await services("gateway")
    code, out, err = await cli(nats_server, "submit", "--name", "x", "--replicas", "0")
    assert code == 1 and out == ""
    assert err.startswith("natsched: error 400: ") and "(field: replicas)" in err
    code, out, err = await cli(nats_server, "submit", "--name", "x", "--replicas", "0", "--json")
    assert code == 1 and json.loads(out)["error"]["field"] == "replicas"


async def test_no_responders_and_no_server_say_the_system_is_not_running(nats_server: NatsServer) -> None:
    code, _, err = await cli(nats_server, "get", "no-such-job")
    assert code == 3 and f"no service answers {s.JOB_GET}: is the system running?" in err
    code, _, err = (
        await run(["list", "--server", "nats://127.0.0.1:1"], out=Output(), err=(e := Output()), env={}),
        "",
        "",
    )
    assert code == 3 and "cannot connect to NATS at nats://127.0.0.1:1" in e.getvalue()


async def test_wrong_credentials_are_named(nats_server: NatsServer) -> None:
    code, _, err = await cli(nats_server, "nodes", "--user", "manager", "--password", "nope")
    assert code == 4 and 'refused user "manager": authorization violation' in err


async def test_submit_get_list_nodes_cancel(services: Spawn, nats_server: NatsServer, database_url: str) -> None:
    # metadata writes node statuses every node_flush_s: 0.2 s here, not the default 10 s
    env = {"DATABASE_URL": database_url, "SCHEDULER_CONFIG": str(METADATA_TOML)}
    await services("gateway", "intake", "placement", "metadata", env=env)
    assert (await cli(nats_server, "simulate-nodes", "6", "--rounds", "1"))[0] == 0
    code, out, err = await cli(nats_server, "submit", "--name", "tour", "--wait")
    assert code == 0 and s.PLACEMENT_DECIDED in out, err  # the one-line summary
    code, out, err = await cli(nats_server, "submit", "--name", "tour", "--wait", "--json")
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (got := await cli(nats_server, "get", job_id, "--json"))[0] != 0 or json.loads(got[1])["state"] != "placed":
        assert loop.time() < deadline, got  # the metadata projection catches up
        await asyncio.sleep(0.1)
    code, out, _ = await cli(nats_server, "get", job_id)
    assert code == 0 and f"job        {job_id}" in out and "placed" in out
    code, out, _ = await cli(nats_server, "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["JOB", "NAME", "STATE"] and job_id in out
    listing: tuple[int, str, str] = (0, "", "")

    async def six_listed() -> bool:
        nonlocal listing
        listing = await cli(nats_server, "nodes")
        return listing[0] == 0 and len(listing[1].splitlines()) == 1 + 6

    await eventually(six_listed, timeout=20, what="the six nodes listed (written every node_flush_s)")
    code, out, err = listing
    assert err.startswith("6 node(s): ") and "active capacity cpu" in err  # the summary, on stderr
    code, out, err = await cli(nats_server, "nodes", "--all", "--limit", "4")
    assert code == 0 and len(out.splitlines()) == 1 + 6 and "6 node(s) shown" in err  # two pages, one header
    code, out, err = await cli(nats_server, "nodes", "--limit", "4", "--label", "zone=nowhere")
    assert code == 0 and len(out.splitlines()) == 1 and err.startswith("0 node(s)")
    code, out, _ = await cli(nats_server, "list", "--all", "--limit", "1")
    assert code == 0 and len(out.splitlines()) == 1 + 2  # both jobs, a page each
    code, out, err = await cli(nats_server, "cancel", job_id)
    assert code == 0, err
    assert out.split()[0] == job_id and out.split()[1] in ("cancelling", "cancelled")
    code, _, err = await cli(nats_server, "cancel", "no-such-job")
    assert code == 1 and "error 404" in err


async def test_drain_and_undrain_a_node_with_clear_errors(services: Spawn, nats_server: NatsServer) -> None:
    await services("placement")
    code, _, err = await cli(nats_server, "simulate-nodes", "2", "--rounds", "1", "--prefix", "dr", "--json")
    assert code == 0, err

    result: tuple[int, str, str] = (0, "", "")

    async def drained() -> bool:
        # placement learns of the nodes from their status; until then the node is unknown (404)
        nonlocal result
        result = await cli(nats_server, "drain", "dr-000", "--reason", "kernel upgrade")
        return result[0] == 0

    await eventually(drained, what="natsched drain dr-000 succeeds")
    code, out, err = result
    assert out.split() == ["dr-000", "draining"] and "natsched undrain dr-000" in err
    code, out, _ = await cli(nats_server, "undrain", "dr-000", "--json")
    assert code == 0 and json.loads(out) == {"node_id": "dr-000", "draining": False}
    code, _, err = await cli(nats_server, "drain", "no-such-node")
    assert code == 1 and "error 404" in err and "natsched nodes" in err
    code, _, err = await cli(nats_server, "undrain", "not a node id")
    assert code == 1 and "error 400" in err and "node_id" in err


async def test_scale_and_plan_as_a_user_types_them(services: Spawn, nats_server: NatsServer) -> None:
    await services("gateway", "intake", "placement")
    assert (await cli(nats_server, "simulate-nodes", "20", "--rounds", "1", "--prefix", "sc"))[0] == 0
    code, out, err = await cli(nats_server, "submit", "--name", "grow", "--cpu", "0.5", "--wait", "--json")
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    code, out, err = await cli(nats_server, "scale", job_id, "3")
    assert code == 0 and out.split() == [job_id, "3", "replica(s)", "scale_requested"], (out, err)
    assert f"natsched watch {job_id}" in err
    code, _, err = await cli(nats_server, "scale", job_id, "0")
    assert code == 1 and "error 400" in err and "replicas" in err
    code, _, err = await cli(nats_server, "scale", "no-such-job", "2")
    assert code == 1 and "error 404" in err
    code, out, err = await cli(nats_server, "plan", "--replicas", "2", "--cpu", "0.5", "--spread")  # no --name
    assert code == 0 and "would place" in out and out.count("sc-") >= 2, (out, err)
    code, out, err = await cli(nats_server, "plan", "--cpu", "4000")
    assert code == 0 and "would not fit" in out and "insufficient cpu" in out, (out, err)


async def test_quota_set_get_and_usage_and_who_may_set_it(services: Spawn, nats_server: NatsServer) -> None:
    await services("placement")
    code, out, err = await cli(nats_server, "quota", "set", "acme", "--cpu", "8", "--jobs", "3")  # admin by default
    assert code == 0, err
    assert "tenant acme" in out and "quota.set" in out
    code, out, err = await cli(nats_server, "quota", "acme", "--json")  # as the manager
    assert code == 0, err
    reply = json.loads(out)
    assert reply["tenant"] == "acme" and reply["source"] == "runtime"
    assert (reply["quota"]["cpu"], reply["quota"]["jobs"], reply["quota"]["gpu"]) == (8.0, 3, None)
    code, out, err = await cli(nats_server, "usage", "acme")
    assert code == 0, err
    rows = {line.split()[0]: line.split(None, 1)[1].strip() for line in out.splitlines()[2:]}
    assert rows["cpu"] == "0 of 8" and rows["jobs"] == "0 of 3" and rows["gpu"] == "0 (unlimited)"

    code, _, err = await cli(nats_server, "quota", "set", "acme", "--cpu", "1", "--user", "manager")
    assert code == 4
    assert err.startswith(f'natsched: NATS user "manager" may not publish to {s.QUOTA_SET} ('), err
