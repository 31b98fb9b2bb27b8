"""Dedicated clusters heal (§8.2): real nats-server, real service processes, the EC2 API of moto.

Instances are stopped and terminated through the EC2 API, as a spot reclaim would; the
provisioner finds them by its periodic check (``timeouts.instance_check_s``, short here).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from services.provisioner.healer import StreamClaims
from services.runtime.streams import ensure_streams
from tests.support.api import request, submit
from tests.support.config import DEDICATED_PATH, PROJECT, aws_env, write_config
from tests.support.ec2 import LIVE, TAG, instances, stop, terminate
from tests.support.servers import Spawn

pytestmark = pytest.mark.integration


def heal_config(tmp_path: Path) -> Path:
    """The tests' config with a check of the instances every 0.3 s."""
    path = write_config(tmp_path)
    path.write_text(path.read_text() + "\n[timeouts]\ninstance_check_s = 0.3\n")
    return path


async def running_cluster(nc: Client, events, timeout: float = 30) -> tuple[str, dict[int, str]]:  # type: ignore[no-untyped-def]
    """Submit a dedicated job of 2 replicas (the legacy body) and wait until it runs: its id and
    each replica's instance."""
    provisioned = await events(s.CLUSTER_PROVISIONED)
    job_id = await submit(nc)
    done = await provisioned.wait(job_id, timeout=timeout)
    return job_id, {i["replica"]: i["instance_id"] for i in done["instances"]}


async def test_stopped_and_terminated_instances_are_replaced_and_the_end_terminates_everything(
    nc: Client, services: Spawn, events, ec2_endpoint: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    await services(*DEDICATED_PATH, env=aws_env(ec2_endpoint, heal_config(tmp_path)))
    replaced = await events(s.CLUSTER_INSTANCE_REPLACED)
    torn_down = await events(s.CLUSTER_TORN_DOWN)
    job_id, old = await running_cluster(nc, events)

    await stop(ec2_endpoint, [old[0]])  # a stopped instance still costs its volume
    await terminate(ec2_endpoint, [old[1]])
    got = sorted(await replaced.wait_many(job_id, 2, timeout=30), key=lambda e: e["replica"])
    assert [(e["replica"], e["old_instance_id"]) for e in got] == [(0, old[0]), (1, old[1])]
    assert all(e["instance_type"] == "t3.medium" and e["private_ip"] for e in got)
    new = {e["new_instance_id"]: e for e in got}

    live = {i["InstanceId"]: i for i in await instances(ec2_endpoint, job_id, LIVE)}
    assert set(live) == set(new)  # the two replacements, and the stopped old one is gone
    for iid, e in new.items():
        inst = live[iid]
        assert inst["State"]["Name"] == "running"
        assert inst["tags"][f"{TAG}:project"] == PROJECT
        assert inst["tags"][f"{TAG}:job-id"] == job_id
        assert inst["tags"][f"{TAG}:replica"] == str(e["replica"])
        assert inst["tags"][f"{TAG}:replaces"] == e["old_instance_id"]
    states = {i["InstanceId"]: i["State"]["Name"] for i in await instances(ec2_endpoint, job_id)}
    assert states[old[0]] == states[old[1]] == "terminated"

    assert await request(nc, s.JOB_CANCEL, {"job_id": job_id}) == (200, {"job_id": job_id, "state": "cancelling"})
    td = await torn_down.wait(job_id, timeout=20)
    assert set(new) <= set(td["instance_ids"]) and td["reason"] == "cancelled"
    assert await instances(ec2_endpoint, job_id, LIVE) == []
    assert len(torn_down.by_job[job_id]) == 1 and len(replaced.by_job[job_id]) == 2


async def test_two_provisioners_replace_a_dead_instance_once(
    nc: Client, services: Spawn, events, ec2_endpoint: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    await services(
        "gateway",
        "intake",
        "placement",
        "teardown",
        "provisioner",
        "provisioner",
        env=aws_env(ec2_endpoint, heal_config(tmp_path)),
    )
    replaced = await events(s.CLUSTER_INSTANCE_REPLACED)
    job_id, old = await running_cluster(nc, events)

    await terminate(ec2_endpoint, [old[0]])
    e = await replaced.wait(job_id, timeout=30)
    assert (e["replica"], e["old_instance_id"]) == (0, old[0])
    # both check every 0.3 s; a second replacement would have to be claimed first, and it cannot be
    claims = await nc.jetstream().stream_info(s.CLUSTERS.name, subjects_filter=s.CLUSTER_INSTANCE_LOST_ALL)
    assert claims.state.subjects == {s.instance_lost_subject(old[0]): 1}
    every = await instances(ec2_endpoint, job_id)  # any state
    assert [i["InstanceId"] for i in every if i["tags"].get(f"{TAG}:replaces") == old[0]] == [e["new_instance_id"]]
    assert sorted(i["InstanceId"] for i in every) == sorted([*old.values(), e["new_instance_id"]])
    assert len(replaced.by_job[job_id]) == 1


async def test_a_claim_is_stored_once_per_instance_whoever_sends_it_and_whenever(nc: Client) -> None:
    """The claim rests on the stream's per-subject sequence, not on the duplicate window: two
    claims at the same moment store one, and a later one with another message id is refused too."""
    js = nc.jetstream()
    await ensure_streams(js, [s.CLUSTERS])
    a, b = StreamClaims(js), StreamClaims(js)
    lost = ev.ClusterInstanceLost(
        event_id="j:cluster.instance_lost:i-1", job_id="j", replica=0, instance_id="i-1", state="stopped"
    )
    assert sorted(await asyncio.gather(a.claim(lost), b.claim(lost))) == [False, True]
    later = ev.ClusterInstanceLost(event_id="another-id", job_id="j", replica=0, instance_id="i-1", state="terminated")
    assert await a.claim(later) is False
    other = ev.ClusterInstanceLost(
        event_id="j:cluster.instance_lost:i-2", job_id="j", replica=1, instance_id="i-2", state="stopped"
    )
    assert await b.claim(other) is True
    info = await js.stream_info(s.CLUSTERS.name, subjects_filter=s.CLUSTER_INSTANCE_LOST_ALL)
    assert info.state.subjects == {s.instance_lost_subject("i-1"): 1, s.instance_lost_subject("i-2"): 1}
