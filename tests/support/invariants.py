"""Invariant checker: after a run, prove from the streams that nothing was lost or overbooked.

``check(events, capacities)`` is pure: it takes the events of JOBS, PLACEMENTS and
CLUSTERS in stream order and each node's capacity, and reports violations:

- every submitted job reaches exactly one decision (``placement.decided``,
  ``placement.failed`` or ``job.rejected``);
- every job that ended (cancel, completion, expiry, failed provisioning) with a
  reservation is released exactly once;
- one job per idempotency key;
- replaying decided/released in stream order, no node's reservations ever exceed its
  capacity (cpu, memory, gpu);
- every instance launched for a job that ended was torn down (``cluster.torn_down``).

``read_events(js)`` reads the streams of a live server (for tests and benchmarks);
``submitted_ids`` lets a caller add the job ids whose ``submitted`` reply it received,
which must all be in the JOBS stream.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable

import msgspec
from nats.js import JetStreamContext
from nats.js import api as js_api

from schemas import events as ev
from schemas import subjects as s

_EPS = 1e-9


class Report(msgspec.Struct):
    jobs: int = 0
    decided: int = 0
    failed: int = 0
    rejected: int = 0
    lost: list[str] = msgspec.field(default_factory=list)
    """Jobs with a ``submitted`` reply (or event) but no decision."""
    multiply_decided: list[str] = msgspec.field(default_factory=list)
    duplicate_keys: list[str] = msgspec.field(default_factory=list)
    missing_from_stream: list[str] = msgspec.field(default_factory=list)
    double_released: list[str] = msgspec.field(default_factory=list)
    unreleased: list[str] = msgspec.field(default_factory=list)
    overbooked: list[str] = msgspec.field(default_factory=list)
    instances_left: list[str] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.multiply_decided
            or self.duplicate_keys
            or self.missing_from_stream
            or self.double_released
            or self.unreleased
            or self.overbooked
            or self.instances_left
        )


ENDINGS = (ev.JobCancelRequested, ev.JobCompleted, ev.JobExpired, ev.ClusterProvisionFailed)


def check(
    events: Iterable[ev.Event],
    capacities: dict[str, tuple[float, int, int]],
    *,
    submitted_ids: Iterable[str] = (),
    require_release: bool = True,
) -> Report:
    r = Report()
    submitted: set[str] = set()
    keys: dict[str, set[str]] = defaultdict(set)
    decisions: Counter[str] = Counter()
    releases: Counter[str] = Counter()
    ended: set[str] = set()
    reserved: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    holdings: dict[str, tuple[ev.PlacementDecided, tuple[str, ...]]] = {}
    launched: dict[str, set[str]] = defaultdict(set)
    torn: dict[str, set[str]] = defaultdict(set)
    overbooked: set[str] = set()
    for e in events:
        match e:
            case ev.JobSubmitted():
                submitted.add(e.job_id)
                if e.idempotency_key:
                    keys[e.idempotency_key].add(e.job_id)
            case ev.JobRejected():
                decisions[e.job_id] += 1
                r.rejected += 1
            case ev.PlacementFailed():
                decisions[e.job_id] += 1
                r.failed += 1
            case ev.PlacementDecided():
                decisions[e.job_id] += 1
                r.decided += 1
                if e.cluster == "shared" and e.resources is not None and e.job_id not in holdings:
                    nodes = tuple(a.node_id for a in e.assignments if a.node_id)
                    holdings[e.job_id] = (e, nodes)
                    for nid in nodes:
                        acc = reserved[nid]
                        acc[0] += e.resources.cpu
                        acc[1] += e.resources.memory_mb
                        acc[2] += e.resources.gpu
                        cap = capacities.get(nid)
                        if cap and (acc[0] > cap[0] + _EPS or acc[1] > cap[1] or acc[2] > cap[2]):
                            overbooked.add(nid)
            case ev.PlacementReleased():
                releases[e.job_id] += 1
                held = holdings.pop(e.job_id, None)
                if held:
                    d, nodes = held
                    assert d.resources is not None
                    for nid in nodes:
                        acc = reserved[nid]
                        acc[0] -= d.resources.cpu
                        acc[1] -= d.resources.memory_mb
                        acc[2] -= d.resources.gpu
            case ev.ClusterProvisioned() | ev.ClusterProvisioning():
                launched[e.job_id].update(i.instance_id for i in e.instances)
            case ev.ClusterTornDown():
                torn[e.job_id].update(e.instance_ids)
            case _:
                pass
        if isinstance(e, ENDINGS):
            ended.add(e.job_id)
    r.jobs = len(submitted)
    r.lost = sorted(j for j in submitted if decisions[j] == 0)
    r.multiply_decided = sorted(j for j, n in decisions.items() if n > 1)
    r.duplicate_keys = sorted(k for k, ids in keys.items() if len(ids) > 1)
    r.missing_from_stream = sorted(set(submitted_ids) - submitted)
    r.double_released = sorted(j for j, n in releases.items() if n > 1)
    if require_release:
        r.unreleased = sorted(j for j in ended if j in holdings)
    r.overbooked = sorted(overbooked)
    r.instances_left = sorted(f"{j}:{i}" for j in ended for i in launched.get(j, set()) - torn.get(j, set()))
    return r


async def read_stream(js: JetStreamContext, stream: str, timeout: float = 30.0) -> list[ev.Event]:
    """Every message of a stream, in order, decoded (undecodable ones skipped)."""
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
                    return out
    finally:
        await psub.unsubscribe()
    raise TimeoutError(f"could not read {stream} to sequence {last}")


async def read_capacities(js: JetStreamContext) -> dict[str, tuple[float, int, int]]:
    caps: dict[str, tuple[float, int, int]] = {}
    for e in await read_stream(js, s.NODES.name):
        if isinstance(e, ev.NodeStatus):
            caps[e.node_id] = (e.cpu_cores, e.memory_mb, e.gpus)
    return caps


async def check_live(
    js: JetStreamContext, *, submitted_ids: Iterable[str] = (), require_release: bool = True
) -> Report:
    events: list[ev.Event] = []
    for stream in (s.JOBS.name, s.PLACEMENTS.name, s.CLUSTERS.name):
        events.extend(await read_stream(js, stream))
    events.sort(key=lambda e: e.at)  # across streams, by event time (per stream order is kept for ties)
    return check(events, await read_capacities(js), submitted_ids=submitted_ids, require_release=require_release)
