"""Invariant checker: after a run, prove from the streams that nothing was lost or overbooked.

``check(events, capacities)`` is pure: it takes the events of JOBS, PLACEMENTS and CLUSTERS
(PLACEMENTS in its stream order) and each node's capacity, and reports violations:

- every submitted job reaches exactly one decision (revision 1 of ``placement.decided``,
  ``placement.failed`` or ``job.rejected``); one job per idempotency key;
- the revisions of a job's placement are 1, 2, 3... in stream order, without gaps or
  duplicates (§8.1), and none comes after the job's release;
- a revision's ``changes`` are exactly the replicas whose node (a dedicated job's: instance
  type) differs from the previous revision (``from`` its old node, ``to`` its new one, null
  where absent), its assignments name each replica below ``wanted`` at most once (a dedicated
  job's: each one), and ``constraints.spread`` is kept;
- replaying the revisions in stream order (the latest revision of each job is booked, the
  previous one released; ``placement.released`` frees whatever the job holds), no node is
  ever booked beyond its capacity (cpu, memory, gpu), moves included;
- every job that ended with a reservation is released exactly once; every instance launched
  for a job that ended (replacements included) was torn down;
- a ``placement.degraded`` of revision r names exactly the replicas absent from revision r;
- preemption (§8.3): every change with reason ``preempted`` that takes a replica off its node
  (a missing victim placed again keeps the reason, with ``from`` and ``by`` null) is of a shared
  job and names in ``by`` a job of strictly higher priority (whose ``preemption`` is not
  ``never``), and each preempting decision's ``preempted`` list is exactly the changes naming
  it, each stored before it.

With ``settled=`` (the nodes as they are now, see :class:`Settled`) it also checks that the
system has settled: every live shared job has all ``wanted`` replicas on nodes that are live
(reported within ``node_lost_s``), not down and not draining, or is degraded (its latest
``placement.degraded`` has a revision >= its latest decided one) with a reason; every
instance of a live dedicated job is running; and the resizing rules of
:mod:`tests.support.settling` (the latest ``job.scale`` in force, a dedicated job's instances
those of its latest revision, nothing alive in EC2 under a released job's tag).

``check_live(js)`` reads the streams of a live server (``tests.support.replay``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext

from schemas import events as ev
from tests.support.replay import NodeView, capacities, instance_states, read_events, read_nodes, read_stream
from tests.support.settling import Settled, dedicated_faults, leaked, scale_fault, tagged_instances

_EPS = 1e-9
ENDINGS = (ev.JobCancelRequested, ev.JobCompleted, ev.JobExpired, ev.ClusterProvisionFailed)


class Report(msgspec.Struct):
    jobs: int = 0
    decided: int = 0
    """Jobs placed (revision 1 of ``placement.decided``)."""
    revisions: int = 0
    """Later revisions (re-placements)."""
    degraded: int = 0
    instances_replaced: int = 0
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
    bad_revisions: list[str] = msgspec.field(default_factory=list)
    """``job: revision r after q``: a gap, a duplicate or one out of order (d)."""
    revised_after_release: list[str] = msgspec.field(default_factory=list)
    bad_changes: list[str] = msgspec.field(default_factory=list)
    bad_assignments: list[str] = msgspec.field(default_factory=list)
    bad_degraded: list[str] = msgspec.field(default_factory=list)
    bad_preemptions: list[str] = msgspec.field(default_factory=list)
    """A victim of a job of equal or lower priority, or a ``preempted`` list that does not match
    the victims' changes (``by``)."""
    preempted: int = 0
    """Replicas preempted (changes with reason ``preempted`` taking a replica off its node)."""
    unsettled: list[str] = msgspec.field(default_factory=list)
    """Live jobs short of replicas (or on lost/draining nodes) without being degraded (c)."""

    @property
    def violations(self) -> dict[str, list[str]]:
        """Every non-empty list of violations, by name."""
        return {k: v for k in self.__struct_fields__ if isinstance(v := getattr(self, k), list) and v}

    @property
    def ok(self) -> bool:
        return not self.violations


class _Job(msgspec.Struct):
    latest: ev.PlacementDecided | None = None
    booked: tuple[str, ...] = ()
    released: bool = False
    degraded: ev.PlacementDegraded | None = None


def _nodes(d: ev.PlacementDecided) -> dict[int, str]:
    return {a.replica: a.node_id for a in d.assignments if a.node_id is not None}


def _where(d: ev.PlacementDecided) -> dict[int, str]:
    """Each placed replica's node, or instance type for a dedicated job (what a change names)."""
    return {a.replica: w for a in d.assignments if (w := a.node_id if d.cluster == "shared" else a.instance_type)}


def _revision_faults(prev: ev.PlacementDecided | None, d: ev.PlacementDecided) -> tuple[list[str], list[str]]:
    """(bad changes, bad assignments) of revision ``d`` after ``prev``."""
    replicas = [a.replica for a in d.assignments]
    bad_asg = []
    if len(replicas) != len(set(replicas)) or any(r < 0 or r >= d.wanted for r in replicas):
        bad_asg.append(f"{d.job_id} r{d.revision}: replicas {sorted(replicas)} of {d.wanted}")
    nodes = [a.node_id for a in d.assignments if a.node_id]
    if d.constraints is not None and d.constraints.spread and len(nodes) != len(set(nodes)):
        bad_asg.append(f"{d.job_id} r{d.revision}: spread broken, nodes {sorted(nodes)}")
    if d.cluster != "shared" and sorted(replicas) != list(range(d.wanted)):
        bad_asg.append(f"{d.job_id} r{d.revision}: dedicated replicas {sorted(replicas)} of {d.wanted}")
    if prev is None:
        return [], bad_asg
    old, new = _where(prev), _where(d)
    moved = {r for r in old.keys() | new.keys() if old.get(r) != new.get(r)}
    told = {c.replica: c for c in d.changes}
    bad = [
        f"{d.job_id} r{d.revision}: replica {r} {old.get(r)}->{new.get(r)}, change says "
        + (f"{told[r].from_}->{told[r].to}" if r in told else "nothing")
        for r in sorted(moved | told.keys())
        if r not in told or r not in moved or (told[r].from_, told[r].to) != (old.get(r), new.get(r))
    ]
    return bad, bad_asg


def check(
    events: Iterable[ev.Event],
    capacities: Mapping[str, tuple[float, int, int]],
    *,
    submitted_ids: Iterable[str] = (),
    require_release: bool = True,
    settled: Settled | None = None,
) -> Report:
    r = Report()
    submitted: set[str] = set()
    keys: dict[str, set[str]] = defaultdict(set)
    decisions: Counter[str] = Counter()
    releases: Counter[str] = Counter()
    ended: set[str] = set()
    jobs: dict[str, _Job] = defaultdict(_Job)
    decided_revs: dict[tuple[str, int], ev.PlacementDecided] = {}
    degraded_events: list[ev.PlacementDegraded] = []
    reserved: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    launched: dict[str, set[str]] = defaultdict(set)
    running: dict[str, set[str]] = {}
    """A provisioned dedicated job's current instances (replacements swapped in)."""
    torn: dict[str, set[str]] = defaultdict(set)
    provisioned: dict[str, ev.ClusterProvisioned] = {}
    """A dedicated job's ``cluster.provisioned`` of the highest revision."""
    scales: dict[str, int] = {}
    """The count of a job's latest ``job.scale_requested`` (JOBS order: the latest wins)."""
    overbooked: set[str] = set()
    never: set[str] = set()
    """Jobs submitted with ``preemption: never``."""
    victims: dict[tuple[str, int, str | None, str | None], ev.PlacementDecided] = {}
    """(victim, replica, from node, by) of every change with reason ``preempted``, in stream order."""
    listed: set[tuple[str, int, str | None, str | None]] = set()
    """The same keys from the preempting decisions' ``preempted`` lists."""

    def book(d: ev.PlacementDecided, nodes: tuple[str, ...], sign: float) -> None:
        assert d.resources is not None
        for nid in nodes:
            acc = reserved[nid]
            acc[0] += sign * d.resources.cpu
            acc[1] += sign * d.resources.memory_mb
            acc[2] += sign * d.resources.gpu
            cap = capacities.get(nid)
            if sign > 0 and cap and (acc[0] > cap[0] + _EPS or acc[1] > cap[1] or acc[2] > cap[2]):
                overbooked.add(nid)

    for e in events:
        match e:
            case ev.JobSubmitted():
                submitted.add(e.job_id)
                if e.spec.preemption == "never":
                    never.add(e.job_id)
                if e.idempotency_key:
                    keys[e.idempotency_key].add(e.job_id)
            case ev.JobRejected():
                decisions[e.job_id] += 1
                r.rejected += 1
            case ev.PlacementFailed():
                decisions[e.job_id] += 1
                r.failed += 1
            case ev.PlacementDecided():
                job = jobs[e.job_id]
                last = job.latest.revision if job.latest else 0
                if e.revision == 1:
                    decisions[e.job_id] += 1
                    r.decided += 1
                else:
                    r.revisions += 1
                if e.revision != last + 1:
                    r.bad_revisions.append(f"{e.job_id}: revision {e.revision} after {last}")
                if e.revision <= last:
                    continue  # a stale or repeated revision: the ledger keeps the highest
                if job.released:
                    r.revised_after_release.append(f"{e.job_id}: revision {e.revision}")
                    continue
                changes, assignments = _revision_faults(job.latest, e)
                r.bad_changes += changes
                r.bad_assignments += assignments
                decided_revs[(e.job_id, e.revision)] = e
                for c in e.changes:
                    if c.reason == "preempted" and c.from_ is not None:  # from null: placed again, no eviction
                        victims[(e.job_id, c.replica, c.from_, c.by)] = e
                for p in e.preempted:
                    key = (p.job_id, p.replica, p.node_id, e.job_id)
                    listed.add(key)
                    if key not in victims:
                        r.bad_preemptions.append(
                            f"{e.job_id} r{e.revision} lists {p.job_id} replica {p.replica} on {p.node_id}, "
                            "no change of that job before it names it"
                        )
                if e.cluster == "shared" and e.resources is not None:
                    if job.latest is not None and job.latest.resources is not None:
                        book(job.latest, job.booked, -1.0)
                    job.booked = tuple(_nodes(e).values())
                    book(e, job.booked, +1.0)
                job.latest = e
            case ev.PlacementDegraded():
                r.degraded += 1
                degraded_events.append(e)
                job = jobs[e.job_id]
                if job.degraded is None or e.revision > job.degraded.revision:
                    job.degraded = e
            case ev.PlacementReleased():
                releases[e.job_id] += 1
                job = jobs[e.job_id]
                if job.latest is not None and job.latest.resources is not None and not job.released:
                    book(job.latest, job.booked, -1.0)
                job.booked, job.released = (), True
            case ev.ClusterProvisioned() | ev.ClusterProvisioning():
                launched[e.job_id].update(i.instance_id for i in e.instances)
                if isinstance(e, ev.ClusterProvisioned):
                    running[e.job_id] = {i.instance_id for i in e.instances}
                    prev = provisioned.get(e.job_id)
                    if prev is None or (e.revision or 1) >= (prev.revision or 1):
                        provisioned[e.job_id] = e
            case ev.JobScaleRequested():
                scales[e.job_id] = e.replicas
            case ev.ClusterInstanceReplaced():
                r.instances_replaced += 1
                launched[e.job_id].add(e.new_instance_id)
                torn[e.job_id].add(e.old_instance_id)  # terminated by the healer before this event
                if e.job_id in running:
                    running[e.job_id] = (running[e.job_id] - {e.old_instance_id}) | {e.new_instance_id}
            case ev.ClusterTornDown():
                torn[e.job_id].update(e.instance_ids)
            case _:
                pass
        if isinstance(e, ENDINGS):
            ended.add(e.job_id)
    for g in degraded_events:
        d = decided_revs.get((g.job_id, g.revision))
        absent = sorted(set(range(d.wanted)) - set(_nodes(d))) if d else None
        if d is None or sorted(g.missing) != absent or not g.reason:
            r.bad_degraded.append(f"{g.job_id} r{g.revision}: missing {sorted(g.missing)}, decided lacks {absent}")
    r.preempted = len(victims)
    r.bad_preemptions += _preemption_faults(victims, listed, decided_revs, never)
    r.jobs = len(submitted)
    r.lost = sorted(j for j in submitted if decisions[j] == 0)
    r.multiply_decided = sorted(j for j, n in decisions.items() if n > 1)
    r.duplicate_keys = sorted(k for k, ids in keys.items() if len(ids) > 1)
    r.missing_from_stream = sorted(set(submitted_ids) - submitted)
    r.double_released = sorted(j for j, n in releases.items() if n > 1)
    if require_release:
        r.unreleased = sorted(
            j for j in ended if (d := jobs[j].latest) and d.cluster == "shared" and d.resources and not jobs[j].released
        )
    r.overbooked = sorted(overbooked)
    r.instances_left = sorted(f"{j}:{i}" for j in ended for i in launched.get(j, set()) - torn.get(j, set()))
    if settled is not None:
        r.unsettled = _unsettled(jobs, ended, running, provisioned, scales, settled)
        r.instances_left = sorted({*r.instances_left, *leaked((j for j in ended if jobs[j].released), settled)})
    return r


def _preemption_faults(
    victims: Mapping[tuple[str, int, str | None, str | None], ev.PlacementDecided],
    listed: set[tuple[str, int, str | None, str | None]],
    decided_revs: Mapping[tuple[str, int], ev.PlacementDecided],
    never: set[str],
) -> list[str]:
    """Each victim's change against the job it names: strictly higher priority, allowed to preempt,
    and listing that replica in its ``preempted``."""
    priority = {j: d.priority for (j, _), d in sorted(decided_revs.items())}
    out = []
    for (victim, replica, node, by), d in victims.items():
        what = f"{victim} r{d.revision} replica {replica} on {node} preempted by {by}"
        if d.cluster != "shared":
            out.append(f"{what}: a {d.cluster} job")
        if by is None or by not in priority:
            out.append(f"{what}: no decision of {by}")
            continue
        if priority[by] <= d.priority:
            out.append(f"{what}: priority {priority[by]} does not exceed the victim's {d.priority}")
        if by in never:
            out.append(f"{what}: {by} says preemption: never")
        if (victim, replica, node, by) not in listed:
            out.append(f"{what}: not in {by}'s preempted list")
    return out


def _unsettled(
    jobs: Mapping[str, _Job],
    ended: set[str],
    running: Mapping[str, set[str]],
    provisioned: Mapping[str, ev.ClusterProvisioned],
    scales: Mapping[str, int],
    at: Settled,
) -> list[str]:
    out = []
    for job_id, job in sorted(jobs.items()):
        d = job.latest
        if d is None or job.released or job_id in ended:
            continue
        if fault := scale_fault(job_id, d, scales.get(job_id)):
            out.append(fault)
        if d.cluster != "shared":
            out += dedicated_faults(job_id, d, provisioned.get(job_id), running.get(job_id, set()), at)
            continue
        nodes = _nodes(d)
        missing = sorted(set(range(d.wanted)) - set(nodes))
        unusable = sorted(f"{rep}@{n}" for rep, n in nodes.items() if not at.usable(n))
        degraded = job.degraded is not None and job.degraded.revision >= d.revision and bool(job.degraded.reason)
        if unusable:
            out.append(f"{job_id} r{d.revision}: replicas on lost or draining nodes {unusable}")
        elif missing and not degraded:
            out.append(f"{job_id} r{d.revision}: replicas {missing} missing and not degraded")
    return out


async def check_live(
    js: JetStreamContext,
    *,
    submitted_ids: Iterable[str] = (),
    require_release: bool = True,
    node_lost_s: float | None = None,
    ec2_endpoint: str | None = None,
) -> Report:
    """``check`` over a live server's streams; with ``node_lost_s``, also whether it has settled
    (with ``ec2_endpoint``, dedicated jobs' instances included)."""
    events = await read_events(js)
    nodes = await read_nodes(js)
    settled = None
    if node_lost_s is not None:
        states = await instance_states(ec2_endpoint) if ec2_endpoint else None
        tagged = await tagged_instances(ec2_endpoint) if ec2_endpoint else None
        settled = Settled(nodes, datetime.now(UTC), node_lost_s, states, tagged)
    return check(
        events, capacities(nodes), submitted_ids=submitted_ids, require_release=require_release, settled=settled
    )


__all__ = [
    "NodeView",
    "Report",
    "Settled",
    "check",
    "check_live",
    "instance_states",
    "read_events",
    "read_nodes",
    "read_stream",
    "tagged_instances",
]
