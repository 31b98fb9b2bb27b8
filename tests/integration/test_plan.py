"""``placement.plan`` through a real nats-server and placement process (§8.3): a decision as it
would be now, or the failure with its explanation; the JobSpec decoded as the gateway does
(legacy body, configured defaults); nothing booked, nothing stored; bad input answered."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client

from schemas import subjects as s
from tests.support.api import LEGACY, job, request
from tests.support.events import node
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration


def plan_config(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "scheduler.toml"
    path.write_text(
        'technologies = ["docker", "unikernel"]\n'
        "[defaults]\ncpu = 2.0\nmemory_mb = 2048\n"
        '[[instance_types]]\nname = "small"\nvcpu = 1\nmemory_mb = 1024\nprice_hourly = 0.01\n'
        '[[instance_types]]\nname = "medium"\nvcpu = 2\nmemory_mb = 4096\nprice_hourly = 0.04\n'
    )
    return {"SCHEDULER_CONFIG": str(path)}


async def last_seqs(nc: Client) -> tuple[int, int]:
    js = nc.jetstream()
    jobs = await js.stream_info(s.JOBS.name)
    placements = await js.stream_info(s.PLACEMENTS.name)
    return jobs.state.last_seq, placements.state.last_seq


async def test_a_plan_is_the_decision_of_now_and_books_nothing(nc: Client, services: Spawn, tmp_path: Path) -> None:
    await services("placement", env=plan_config(tmp_path))
    await node(nc, "a", 8.0)
    await node(nc, "b", 6.0)
    before = await last_seqs(nc)

    for _ in range(3):  # the same answer every time: nothing was booked by the previous plan
        code, reply = await request(nc, s.PLACEMENT_PLAN, job("web", 4, replicas=2))
        assert code == 200, reply
        assert reply["decision"]["assignments"] == [{"replica": 0, "node_id": "a"}, {"replica": 1, "node_id": "b"}]
        assert [c["node_id"] for c in reply["decision"]["candidates"]] == ["a", "b"]
        assert reply["decision"]["candidates"][0]["cpu_free"] == 8.0
        assert "failure" not in reply

    code, reply = await request(nc, s.PLACEMENT_PLAN, {"name": "defaults"})  # cpu 2 from the config
    assert code == 200 and reply["decision"]["assignments"] == [{"replica": 0, "node_id": "a"}]

    code, reply = await request(nc, s.PLACEMENT_PLAN, LEGACY)  # dedicated, 2 replicas, default resources
    assert code == 200, reply
    assert reply["decision"]["assignments"] == [
        {"replica": 0, "instance_type": "medium"},
        {"replica": 1, "instance_type": "medium"},
    ]
    assert await last_seqs(nc) == before  # no job, no decision stored


async def test_a_plan_that_fits_nowhere_explains_itself(nc: Client, services: Spawn, tmp_path: Path) -> None:
    await services("placement", env=plan_config(tmp_path))
    await node(nc, "a", 8.0)
    await node(nc, "b", 2.0)
    await node(nc, "u", 8.0, techs=("unikernel",))

    code, reply = await request(nc, s.PLACEMENT_PLAN, job("huge", 4, replicas=2, constraints={"spread": True}))
    assert code == 200, reply
    failure = reply["failure"]
    assert "decision" not in reply and failure["nodes_total"] == 3
    assert failure["excluded"]["technology"] == 1 and failure["excluded"]["cpu"] == 1
    assert failure["reason"].startswith("0/3 nodes available: 1 lack technology docker, 1 insufficient cpu")
    assert "only 1 of 2 replicas fit" in failure["reason"]

    code, reply = await request(nc, s.PLACEMENT_PLAN, job("vast", 64, cluster="dedicated"))
    assert code == 200 and reply["failure"]["reason"].startswith("0/2 instance types offer 64 cpu")


async def test_bad_input_gets_a_clear_error(nc: Client, services: Spawn, tmp_path: Path) -> None:
    await services("placement", env=plan_config(tmp_path))
    code, reply = await request(nc, s.PLACEMENT_PLAN, b"{not json")
    assert code == 400 and "malformed JSON" in reply["error"]["message"]
    code, reply = await request(nc, s.PLACEMENT_PLAN, {"name": "x", "resources": {"cpu": -1}})
    assert code == 400 and reply["error"]["field"] == "resources.cpu"
    code, reply = await request(nc, s.PLACEMENT_PLAN, {"name": "x", "typo": 1})
    assert code == 400 and reply["error"]["field"] == "typo"
    code, reply = await request(nc, s.PLACEMENT_PLAN, b"[" * 100_000)
    assert code == 400
    code, reply = await request(nc, s.PLACEMENT_PLAN, b" " * (256 * 1024 + 1))
    assert code == 413
    code, reply = await request(nc, s.PLACEMENT_PLAN, job("still", 1))
    assert code == 200  # the service is still answering
