"""What "settled" means for the invariant checker (:mod:`tests.support.invariants`), beside its
stream replay: the nodes and EC2 as they are now, and the per-job rules of a settled system.

- a live job's latest revision wants the count of its latest ``job.scale_requested`` (§8.3:
  the latest request wins, and every request of a live job is applied in the end);
- a live dedicated job's instances are those of its latest revision: ``cluster.provisioned`` of
  that revision, one running instance per replica below the wanted count and none above it
  (EC2 by the job's tag, so an instance launched twice or left over by a shrink is seen even if no
  event names it);
- an ended, released job has no instance running or pending in EC2 under its tag.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime

import aioboto3
import msgspec

from schemas import events as ev
from services.cloud.instances import TagScheme
from services.runtime.config import AwsConf
from tests.support.replay import NodeView

ALIVE = ("pending", "running")
"""EC2 states of an instance that still runs (or is about to)."""


class Tagged(msgspec.Struct, frozen=True):
    """An instance found in EC2 under a job's tag."""

    replica: int | None
    state: str


class Settled(msgspec.Struct, frozen=True):
    """What "settled" is measured against: the nodes' last reports, now, and the loss timeout."""

    nodes: Mapping[str, NodeView]
    now: datetime
    node_lost_s: float
    instance_states: Mapping[str, str] | None = None
    """EC2 state of each instance (``running``, ``stopped``...); None: dedicated jobs not checked."""
    tagged: Mapping[str, Mapping[str, Tagged]] | None = None
    """EC2's instances by job tag: job id -> instance id -> (replica, state); None: not checked."""

    def usable(self, node_id: str) -> bool:
        n = self.nodes.get(node_id)
        if n is None or n.state != "active" or n.draining:
            return False
        return (self.now - n.last_at).total_seconds() <= self.node_lost_s


def scale_fault(job_id: str, d: ev.PlacementDecided, asked: int | None) -> str | None:
    """A live job whose latest revision does not want its latest scale request's count."""
    if asked is None or d.wanted == asked:
        return None
    return f"{job_id} r{d.revision}: wants {d.wanted}, the latest job.scale asked {asked}"


def dedicated_faults(
    job_id: str, d: ev.PlacementDecided, provisioned: ev.ClusterProvisioned | None, current: set[str], at: Settled
) -> list[str]:
    """Why a live dedicated job is not settled: its current instances (``current``: the latest
    ``cluster.provisioned`` with replacements swapped in) not running, a revision not provisioned
    yet, or EC2 holding other than one live instance per wanted replica."""
    out = []
    if at.instance_states is not None:
        down = sorted(i for i in current if at.instance_states.get(i) != "running")
        if down:
            out.append(f"{job_id}: instances not running {down}")
    if provisioned is None:
        return out
    if (provisioned.revision or 1) != d.revision:
        out.append(f"{job_id}: revision {d.revision} decided, {provisioned.revision or 1} provisioned")
    if at.tagged is not None:
        live: dict[int | None, list[str]] = defaultdict(list)
        for iid, t in at.tagged.get(job_id, {}).items():
            if t.state in ALIVE:
                live[t.replica].append(iid)
        wrong = {r: sorted(ids) for r, ids in live.items() if r is None or r >= d.wanted or len(ids) > 1}
        absent = sorted(r for r in range(d.wanted) if r not in live)
        if wrong or absent:
            out.append(
                f"{job_id} r{d.revision}: EC2 holds {dict(sorted(wrong.items(), key=str))} beyond one "
                f"per replica below {d.wanted}, none for {absent}"
            )
    return out


def leaked(released: Iterable[str], at: Settled) -> list[str]:
    """``job:instance`` of every instance still alive in EC2 under the tag of a released job."""
    if at.tagged is None:
        return []
    return sorted(f"{j}:{iid}" for j in released for iid, t in at.tagged.get(j, {}).items() if t.state in ALIVE)


async def tagged_instances(endpoint: str, aws: AwsConf | None = None) -> dict[str, dict[str, Tagged]]:
    """Every instance carrying the project's job tag (moto, asked directly), by job id."""
    conf = aws or AwsConf()
    tags = TagScheme(conf.tag_prefix, conf.project)
    session = aioboto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-central-1")
    out: dict[str, dict[str, Tagged]] = defaultdict(dict)
    async with session.client("ec2", endpoint_url=endpoint) as ec2:
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{tags.project_key}", "Values": [conf.project]}]
        )
        async for page in pages:
            for res in page["Reservations"]:
                for i in res["Instances"]:
                    tag = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
                    job = tag.get(tags.job_key)
                    replica = tag.get(tags.replica_key)
                    if job:
                        out[job][i["InstanceId"]] = Tagged(
                            int(replica) if replica and replica.isdigit() else None, i["State"]["Name"]
                        )
    return dict(out)


__all__ = ["ALIVE", "Settled", "Tagged", "dedicated_faults", "leaked", "scale_fault", "tagged_instances"]
