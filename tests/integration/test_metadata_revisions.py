"""The metadata service (a real process, real nats-server and PostgreSQL) on the living fleet's events
(§8.1-8.2): placement revisions out of order, placement.degraded, node.draining facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import events as ev
from schemas import subjects as s
from tests.support.api import nodes_listed, request, start_metadata
from tests.support.events import lifecycle, node_status, publish, spec_revision
from tests.support.servers import Spawn
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def job(nc: Client, job_id: str) -> dict[str, Any]:
    code, body = await request(nc, s.JOB_GET, {"job_id": job_id})
    return body if code == 200 else {}


async def nodes(nc: Client, **filters: Any) -> dict[str, Any]:
    code, body = await request(nc, s.NODE_LIST, filters)
    assert code == 200, body
    return {n["node_id"]: n for n in body["nodes"]}


async def test_revisions_in_any_order_degraded_and_reservations(nc: Client, services: Spawn, database_url: str) -> None:
    js = nc.jetstream()
    await start_metadata(nc, services, database_url)
    now = datetime.now(UTC)
    await publish(js, [node_status(n, now) for n in ("n1", "n2", "n3")])
    await nodes_listed(nc, "n1", "n2", "n3")
    first = lifecycle("job-r", now)  # revision 1: replicas on n1 and n2
    lost = ev.Change(replica=1, from_="n2", to=None, reason="node_lost")
    r2 = spec_revision("job-r", 2, {0: "n1"}, at=now + timedelta(seconds=1), changes=[lost])
    degraded = ev.PlacementDegraded(
        event_id=ev.revision_event_id("job-r", s.PLACEMENT_DEGRADED, 2),
        job_id="job-r",
        at=now + timedelta(seconds=1),
        revision=2,
        missing=[1],
        reason="0/3 nodes available: 1 inactive, 2 insufficient cpu",
    )
    # revision 2 and its degraded event are stored before revision 1
    await publish(js, [r2, degraded])
    await publish(js, first)

    async def degraded_on_revision_2() -> bool:
        rec = await job(nc, "job-r")
        return rec.get("state") == "degraded" and rec["spec"] is not None

    await eventually(degraded_on_revision_2, what="job-r degraded at revision 2")
    rec = await job(nc, "job-r")
    p = rec["placement"]
    assert (p["revision"], p["replicas"], p["missing"]) == (2, 2, [1])
    assert p["degraded_reason"].startswith("0/3 nodes available")
    assert [a["node_id"] for a in p["assignments"]] == ["n1"]
    # a change says its null fields: "to": null is a replica that fits nowhere for now
    assert [(r["revision"], r["changes"]) for r in p["revisions"]] == [
        (1, []),
        (2, [{"replica": 1, "from": "n2", "to": None, "reason": "node_lost", "by": None}]),
    ]
    code, listed = await request(nc, s.JOB_LIST, {"state": "degraded"})
    assert code == 200 and [j["job_id"] for j in listed["jobs"]] == ["job-r"]
    fleet = await nodes(nc)
    assert (fleet["n1"]["reserved"]["replicas"], fleet["n2"]["reserved"]["replicas"]) == (1, 0)

    back = ev.Change(replica=1, from_=None, to="n3", reason="node_lost")
    await publish(js, [spec_revision("job-r", 3, {0: "n1", 1: "n3"}, at=now + timedelta(seconds=2), changes=[back])])

    async def placed_again() -> bool:
        return (await job(nc, "job-r")).get("state") == "placed"

    await eventually(placed_again, what="job-r placed again at revision 3")
    p = (await job(nc, "job-r"))["placement"]
    assert (p["revision"], p["missing"], p["degraded_reason"]) == (3, [], None)
    fleet = await nodes(nc)
    assert [fleet[n]["reserved"]["replicas"] for n in ("n1", "n2", "n3")] == [1, 0, 1]


async def test_drained_nodes_are_listed_draining(nc: Client, services: Spawn, database_url: str) -> None:
    js = nc.jetstream()
    await start_metadata(nc, services, database_url)
    now = datetime.now(UTC)
    agent_drains = ev.NodeStatus(**{**_builtins(node_status("d3", now)), "state": "draining"})
    await publish(js, [node_status("d1", now), node_status("d2", now), agent_drains])
    await nodes_listed(nc, "d1", "d2", "d3")

    def drain(node_id: str, draining: bool, at: datetime) -> ev.NodeDraining:
        return ev.NodeDraining(
            event_id=f"{s.NODE_DRAINING}:{node_id}:{at.isoformat()}",
            node_id=node_id,
            at=at,
            draining=draining,
            reason="kernel upgrade" if draining else None,
        )

    # a drain fact may come before the node's first status, and an older one after a newer one
    await publish(js, [drain("d0", True, now), drain("d1", True, now + timedelta(seconds=1))])
    await publish(js, [drain("d1", False, now)])

    async def d1_draining() -> bool:
        fleet = await nodes(nc)
        return "d1" in fleet and fleet["d1"]["draining"] is True

    await eventually(d1_draining, what="d1 listed as draining")
    fleet = await nodes(nc)
    assert sorted(fleet) == ["d1", "d2", "d3"]  # d0 has no status: not a node to list yet
    assert [fleet[n]["draining"] for n in ("d1", "d2", "d3")] == [True, False, True]
    assert sorted(await nodes(nc, state="draining")) == ["d1", "d3"]
    code, body = await request(nc, s.NODE_LIST, {"summary": True})
    assert code == 200 and (body["summary"]["states"]["draining"], body["summary"]["states"]["active"]) == (2, 1)

    await publish(js, [drain("d1", False, now + timedelta(seconds=2))])

    async def d1_undrained() -> bool:
        return (await nodes(nc))["d1"]["draining"] is False

    await eventually(d1_undrained, what="d1 undrained")
    assert sorted(await nodes(nc, state="active")) == ["d1", "d2"]


def _builtins(status: ev.NodeStatus) -> dict[str, Any]:
    return {f: getattr(status, f) for f in status.__struct_fields__}
