"""Reading a live server's streams for the invariant checker: events in order, and the nodes
as their last reports and drain facts in the NODES stream describe them."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Mapping
from datetime import datetime

import aioboto3
import msgspec
from nats.js import JetStreamContext
from nats.js import api as js_api

from schemas import events as ev
from schemas import subjects as s


class NodeView(msgspec.Struct, frozen=True):
    """A node as its last status (and its last drain fact) in the NODES stream say."""

    cpu: float
    memory_mb: int
    gpus: int
    last_at: datetime
    """When it last reported (the status's ``at``, the agent's clock)."""
    state: str = "active"
    draining: bool = False
    """Drained by ``node.drain`` (a ``node.draining`` fact) or reporting ``state: draining``."""


async def read_stream(js: JetStreamContext, stream: str, timeout: float = 60.0) -> list[ev.Event]:
    """Every message of a stream up to its last sequence now, in order, decoded (undecodable ones skipped).

    Once that sequence is reached, the stream's last sequence is asked again and read up to once
    more: in a stream that keeps one message per subject (NODES), a node's message can be
    replaced while the read is under way, the old one deleted before it was reached and the new
    one beyond the first last sequence; the second round reads every subject's newest message
    as of when it was asked (a message passed over was deleted, so a newer one exists)."""
    info = await js.stream_info(stream)
    last = info.state.last_seq
    out: list[ev.Event] = []
    if info.state.messages == 0:
        return out
    psub = await js.pull_subscribe(
        "",
        stream=stream,
        config=js_api.ConsumerConfig(
            ack_policy=js_api.AckPolicy.NONE, deliver_policy=js_api.DeliverPolicy.ALL, inactive_threshold=30
        ),
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    again = False
    try:
        while loop.time() < deadline:
            try:
                msgs = await psub.fetch(1000, timeout=1)
            except Exception:
                continue
            for m in msgs:
                try:
                    out.append(ev.any_event_decoder.decode(m.data))
                except msgspec.DecodeError:
                    pass
                if m.metadata.sequence.stream >= last:
                    if again:
                        return out
                    again, before = True, last
                    last = (await js.stream_info(stream)).state.last_seq
                    if last <= before:
                        return out
    finally:
        await psub.unsubscribe()
    raise TimeoutError(f"could not read {stream} to sequence {last}")


async def read_events(js: JetStreamContext) -> list[ev.Event]:
    """JOBS, PLACEMENTS and CLUSTERS in one sequence by event time, each stream's own order
    kept (a revision's place in PLACEMENTS is what the ledger follows, whatever its ``at``)."""
    streams = [await read_stream(js, name) for name in (s.JOBS.name, s.PLACEMENTS.name, s.CLUSTERS.name)]
    return list(heapq.merge(*streams, key=lambda e: e.at))


def fold_nodes(events: list[ev.Event]) -> dict[str, NodeView]:
    """Each node's last status with its drain fact (the NODES stream keeps one of each per node)."""
    statuses: dict[str, ev.NodeStatus] = {}
    drained: dict[str, bool] = {}
    for e in events:
        if isinstance(e, ev.NodeStatus):
            statuses[e.node_id] = e
        elif isinstance(e, ev.NodeDraining):
            drained[e.node_id] = e.draining
    return {
        n: NodeView(
            cpu=st.cpu_cores,
            memory_mb=st.memory_mb,
            gpus=st.gpus,
            last_at=st.at,
            state=st.state,
            draining=drained.get(n, False) or st.state == "draining",
        )
        for n, st in statuses.items()
    }


async def read_nodes(js: JetStreamContext) -> dict[str, NodeView]:
    return fold_nodes(await read_stream(js, s.NODES.name))


def capacities(nodes: Mapping[str, NodeView]) -> dict[str, tuple[float, int, int]]:
    return {n: (v.cpu, v.memory_mb, v.gpus) for n, v in nodes.items()}


async def read_capacities(js: JetStreamContext) -> dict[str, tuple[float, int, int]]:
    return capacities(await read_nodes(js))


async def instance_states(endpoint: str) -> dict[str, str]:
    """The EC2 state of every instance (moto, asked directly), by instance id."""
    session = aioboto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="eu-central-1")
    async with session.client("ec2", endpoint_url=endpoint) as ec2:
        out = await ec2.describe_instances()
    return {i["InstanceId"]: i["State"]["Name"] for res in out["Reservations"] for i in res["Instances"]}


async def wait_for_nodes(js: JetStreamContext, count: int, timeout: float = 120.0) -> None:
    """Until the NODES stream holds the status of at least ``count`` nodes (it keeps one message
    per subject, so its message count is the number of nodes, plus any drain facts)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (info := await js.stream_info(s.NODES.name)).state.messages < count:
        if loop.time() > deadline:
            raise TimeoutError(f"only {info.state.messages} of {count} nodes reported in {timeout} s")
        await asyncio.sleep(0.2)
