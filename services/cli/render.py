"""Text output: aligned tables, state colours on a terminal, one-line event summaries (pure, no I/O)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_ANSI = re.compile(r"\033\[[0-9;]*m")

GREEN, RED, YELLOW, BLUE, GREY, BOLD = "32", "31", "33", "34", "90", "1"
STATE_COLOURS = {
    "active": GREEN,
    "accepted": GREEN,
    "placed": GREEN,
    "running": GREEN,
    "succeeded": GREEN,
    "submitted": BLUE,
    "pending": YELLOW,
    "provisioning": YELLOW,
    "cancelling": YELLOW,
    "draining": YELLOW,
    "degraded": YELLOW,
    "replaced": GREY,
    "rejected": RED,
    "failed": RED,
    "down": RED,
    "expired": GREY,
    "cancelled": GREY,
    "inactive": GREY,
}


class Style:
    """ANSI colours, or none (not a terminal, ``NO_COLOR``, ``--no-color``)."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def paint(self, text: str, code: str | None) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour and code else text

    def state(self, state: str) -> str:
        return self.paint(state, STATE_COLOURS.get(state))

    def bold(self, text: str) -> str:
        return self.paint(text, BOLD)


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], style: Style, *, header: bool = True) -> str:
    """Columns padded to their widest cell (colour codes do not count); numbers right-aligned.
    Without ``header`` (a later page of a listing) only the rows."""
    widths = [visible_len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], visible_len(cell))
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            pad = " " * (widths[i] - visible_len(cell))
            out.append(pad + cell if numeric[i] else cell + pad)
        return "  ".join(out).rstrip()

    head = [line([style.bold(h) for h in headers])] if header else []
    lines = [*head, *(line(r) for r in rows)]
    return "\n".join(lines) + "\n" if lines else ""


def _is_number(cell: str) -> bool:
    return bool(re.fullmatch(r"-?[0-9][0-9.,/ ]*", _ANSI.sub("", cell)))


def num(value: Any) -> str:
    """``6`` for 6.0, ``1.5`` for 1.5, ``-`` for nothing."""
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def when(value: Any) -> str:
    """An RFC 3339 time shortened to ``YYYY-MM-DD HH:MM:SS``."""
    if not isinstance(value, str):
        return "-"
    return value.replace("T", " ")[:19]


def jobs_table(jobs: Sequence[Mapping[str, Any]], style: Style, *, header: bool = True) -> str:
    rows = []
    for job in jobs:
        spec = job.get("spec") or {}
        res = spec.get("resources") or {}
        rows.append(
            [
                str(job.get("job_id", "")),
                str(spec.get("name", "-")),
                style.state(str(job.get("state", "?"))),
                str(spec.get("cluster", "-")),
                num((job.get("placement") or {}).get("replicas") or spec.get("replicas")),  # wanted, after job.scale
                num(res.get("cpu")),
                num(res.get("memory_mb")),
                when(job.get("submitted_at")),
                str(job.get("reason") or ""),
            ]
        )
    headers = ["JOB", "NAME", "STATE", "CLUSTER", "REPLICAS", "CPU", "MEM_MB", "SUBMITTED", "REASON"]
    return table(headers, rows, style, header=header)


def nodes_table(nodes: Sequence[Mapping[str, Any]], style: Style, *, header: bool = True) -> str:
    rows = []
    for n in nodes:
        reserved = n.get("reserved") or {}
        state = str(n.get("state", "?"))
        if n.get("active") is False and state == "active":
            state = "inactive"  # reported active, but its last status is older than the node TTL
        elif n.get("draining") and state == "active":
            state = "draining"  # drained by node.drain: takes no new replicas
        labels = n.get("labels") or {}
        rows.append(
            [
                str(n.get("node_id", "")),
                style.state(state),
                "yes" if n.get("draining") else "-",
                f"{num(n.get('cpu_free'))}/{num(n.get('cpu_cores'))}",
                num(reserved.get("cpu", 0)),
                f"{num(n.get('memory_free_mb'))}/{num(n.get('memory_mb'))}",
                num(reserved.get("memory_mb", 0)),
                num(n.get("gpus", 0)),
                num(reserved.get("replicas", 0)),
                ",".join(n.get("technologies") or []),
                ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            ]
        )
    headers = ["NODE", "STATE", "DRAIN", "CPU_FREE", "CPU_RSV", "MEM_FREE_MB", "MEM_RSV_MB", "GPUS", "REPLICAS", "TECH"]
    return table([*headers, "LABELS"], rows, style, header=header)


def nodes_summary(summary: Mapping[str, Any]) -> str:
    """``12000 node(s): 11800 active, 150 inactive, 40 draining, 10 down; active capacity cpu 96000
    (free 41000), memory_mb ... (free ...), gpu 0 (free 0); reserved on 3000 replica(s)``."""
    states = summary.get("states") or {}
    cap, free = summary.get("capacity") or {}, summary.get("free") or {}
    reserved = summary.get("reserved") or {}
    counts = ", ".join(f"{n} {state}" for state, n in states.items())
    amounts = ", ".join(f"{k} {num(cap.get(k, 0))} (free {num(free.get(k, 0))})" for k in ("cpu", "memory_mb", "gpu"))
    return (
        f"{summary.get('total', 0)} node(s): {counts}; active capacity {amounts};"
        f" {num(reserved.get('replicas', 0))} replica(s) reserved"
    )


def job_detail(job: Mapping[str, Any], style: Style) -> str:
    spec = job.get("spec") or {}
    res = spec.get("resources") or {}
    placement = job.get("placement") or {}
    wanted = placement.get("replicas") or spec.get("replicas")  # job.scale changes the count, not the spec
    lines = [
        f"{style.bold('job')}        {job.get('job_id')}",
        f"{style.bold('state')}      {style.state(str(job.get('state')))}"
        + (f"  ({job['reason']})" if job.get("reason") else ""),
        f"{style.bold('name')}       {spec.get('name', '-')}   technology {spec.get('technology', '-')}"
        f"   cluster {spec.get('cluster', '-')}   strategy {spec.get('strategy', '-')}",
        f"{style.bold('resources')}  {num(wanted)} x (cpu {num(res.get('cpu'))},"
        f" memory {num(res.get('memory_mb'))} MiB, gpu {num(res.get('gpu', 0))})",
        f"{style.bold('submitted')}  {when(job.get('submitted_at'))}   updated {when(job.get('updated_at'))}",
    ]
    out = "\n".join(lines) + "\n"
    assignments = placement.get("assignments") or []
    if placement:
        out += placement_line(placement, style)
    if assignments:
        rows = [[num(a.get("replica")), str(a.get("node_id") or a.get("instance_type") or "-")] for a in assignments]
        out += "\n" + table(["REPLICA", "NODE/TYPE"], rows, style)
    preempted = placement.get("preempted") or []
    if preempted:
        out += "\n" + style.bold("took room from (preempted)") + "\n" + preempted_table(preempted, style)
    revisions = placement.get("revisions") or []
    if len(revisions) > 1:
        rows = [[num(r.get("revision")), when(r.get("at")), changes_text(r.get("changes") or [])] for r in revisions]
        out += "\n" + table(["REVISION", "AT", "CHANGES"], rows, style)
    instances = job.get("instances") or []
    if instances:
        rows = [
            [
                num(i.get("replica")),
                str(i.get("instance_id", "")),
                str(i.get("instance_type", "")),
                style.state(str(i.get("state", ""))),
                str(i.get("private_ip") or "-"),
            ]
            for i in instances
        ]
        out += "\n" + table(["REPLICA", "INSTANCE", "TYPE", "STATE", "PRIVATE_IP"], rows, style)
    history = job.get("history") or []
    if history:
        rows = [[when(h.get("at")), style.state(str(h.get("state")))] for h in history]
        out += "\n" + table(["AT", "STATE"], rows, style)
    return out


def placement_line(placement: Mapping[str, Any], style: Style) -> str:
    """``placement  revision 2: 1 of 2 replica(s) placed, missing replica(s) 1 (0/3 nodes available: ...)``."""
    placed = len(placement.get("assignments") or [])
    wanted = placement.get("replicas") or placed
    revision = num(placement.get("revision", 1))
    line = f"{style.bold('placement')}  revision {revision}: {placed} of {wanted} replica(s) placed"
    missing = placement.get("missing") or []
    if missing:
        line += style.paint(f", missing replica(s) {', '.join(num(r) for r in missing)}", YELLOW)
        if placement.get("degraded_reason"):
            line += f" ({placement['degraded_reason']})"
    return line + "\n"


def candidates_table(candidates: Sequence[Mapping[str, Any]], style: Style, *, dedicated: bool) -> str:
    """A decision's candidates, best first; ``DISTANCE KM`` when the job gave ``constraints.near``."""
    headers = ["INSTANCE TYPE", "VCPU", "MEMORY MB"] if dedicated else ["NODE", "CPU FREE", "MEMORY FREE MB"]
    headers.append("PRICE/H")
    near = any(c.get("distance_km") is not None for c in candidates)
    rows = []
    for c in candidates:
        row = [
            str(c.get("node_id") or c.get("instance_type") or "-"),
            num(c.get("cpu_free", c.get("vcpu"))),
            num(c.get("memory_free_mb", c.get("memory_mb"))),
            num(c.get("price_hourly")),
        ]
        rows.append([*row, _km(c.get("distance_km"))] if near else row)
    return table([*headers, "DISTANCE KM"] if near else headers, rows, style)


def _km(value: Any) -> str:
    """``12.3`` (one decimal), ``-`` for none."""
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def preempted_table(preempted: Sequence[Mapping[str, Any]], style: Style) -> str:
    """The replicas of lower-priority jobs a decision took room from (its ``preempted``)."""
    rows = [[str(p.get("job_id", "")), num(p.get("replica")), str(p.get("node_id") or "-")] for p in preempted]
    return table(["JOB", "REPLICA", "NODE"], rows, style)


def preempted_text(preempted: Sequence[Mapping[str, Any]]) -> str:
    """``preempted j7 replica 0 on n3, j9 replica 1 on n3``."""
    victims = (f"{p.get('job_id')} replica {num(p.get('replica'))} on {p.get('node_id')}" for p in preempted)
    return "preempted " + ", ".join(victims)


def changes_text(changes: Sequence[Mapping[str, Any]]) -> str:
    """``replica 1 n2 -> n5 (node_lost); replica 0 n1 -> none (preempted by j7)``."""
    parts = []
    for c in changes:
        by = f" by {c['by']}" if c.get("by") else ""
        parts.append(
            f"replica {num(c.get('replica'))} {c.get('from') or 'none'} -> {c.get('to') or 'none'}"
            f" ({c.get('reason', '?')}{by})"
        )
    return "; ".join(parts)


def event_line(event: Mapping[str, Any], style: Style) -> str:
    """``2026-11-28 16:08:34  placement.decided  <job>  replicas on node-7, node-3``."""
    kind = str(event.get("type", "?"))
    subject_id = str(event.get("job_id") or event.get("node_id") or "")
    return f"{when(event.get('at'))}  {style.paint(f'{kind:<26}', _event_colour(kind))} {subject_id}  {summary(event)}"


def _event_colour(kind: str) -> str | None:
    if kind.endswith(("failed", "rejected", "expired")) or kind.startswith("deadletter"):
        return RED
    if kind.endswith(("degraded", "draining", "replaced")):
        return YELLOW
    if kind.endswith(("decided", "accepted", "provisioned", "completed")):
        return GREEN
    return BLUE


def summary(event: Mapping[str, Any]) -> str:
    kind = event.get("type")
    if kind == "placement.decided" and event.get("preempted"):
        return f"{_decided_summary(event)}; {preempted_text(event['preempted'])}"
    if kind == "placement.decided":
        return _decided_summary(event)
    if kind == "placement.degraded":
        missing = ", ".join(num(r) for r in event.get("missing") or [])
        return f"revision {num(event.get('revision'))}: replica(s) {missing} fit nowhere: {event.get('reason', '')}"
    if kind == "node.draining":
        return ("draining" if event.get("draining") else "undrained") + (
            f": {event['reason']}" if event.get("reason") else ""
        )
    if kind == "cluster.instance_replaced":
        return f"replica {num(event.get('replica'))}: {event.get('old_instance_id')} -> {event.get('new_instance_id')}"
    if event.get("reason"):
        return str(event["reason"])
    if kind == "job.submitted":
        spec = event.get("spec") or {}
        return f"{spec.get('name', '')} ({spec.get('cluster', '')}, {num(spec.get('replicas'))} replica(s))"
    if kind == "job.scale_requested":
        return f"to {num(event.get('replicas'))} replica(s)"
    if kind == "job.completed":
        return str(event.get("outcome", ""))
    if kind == "node.status":
        return f"{event.get('state')} cpu {num(event.get('cpu_free'))}/{num(event.get('cpu_cores'))}"
    return ""


def _decided_summary(event: Mapping[str, Any]) -> str:
    """Revision 1: where the replicas run; a later one: its changes (a victim's name the job that took the room)."""
    where = [str(a.get("node_id") or a.get("instance_type")) for a in event.get("assignments") or []]
    if (event.get("revision") or 1) > 1:
        return f"revision {num(event['revision'])}: {changes_text(event.get('changes') or [])}; {len(where)} placed"
    return f"{len(where)} replica(s) on {', '.join(where)}"


QUOTA_FIELDS: tuple[tuple[str, str], ...] = (
    ("cpu", "cpu"),
    ("memory_mb", "memory_mb"),
    ("gpu", "gpu"),
    ("jobs", "jobs"),
    ("instances", "instances"),
    ("cpu_hours", "cpu_hours (30 d)"),
)
"""A quota's limits in the order shown, and their labels."""

QUOTA_SOURCES = {"config": "the config's [tenants]", "runtime": "quota.set", "none": "none set: unlimited"}


def limit(value: Any) -> str:
    """A quota's limit: its number, or ``unlimited`` for null."""
    return "unlimited" if value is None else num(value)


def quota_text(reply: Mapping[str, Any], style: Style) -> str:
    """``quota.get``/``quota.set``'s reply: the tenant, where its quota comes from, each limit."""
    quota = reply.get("quota") or {}
    source = str(reply.get("source", "?"))
    head = f"{style.bold('tenant')} {reply.get('tenant', '?')}  (quota from {QUOTA_SOURCES.get(source, source)})"
    rows = [[label, limit(quota.get(key))] for key, label in QUOTA_FIELDS]
    return head + "\n" + table(["LIMIT", "QUOTA"], rows, style)


def used_of(used: Any, quota: Any) -> str:
    """``6 of 8``; ``6 (unlimited)`` without a limit."""
    return f"{num(used)} of {num(quota)}" if quota is not None else f"{num(used)} (unlimited)"


def usage_text(reply: Mapping[str, Any], style: Style) -> str:
    """``tenant.usage``'s reply: each resource's use against its quota (``cpu  6 of 8``), over-quota
    ones in red."""
    usage, quota = reply.get("usage") or {}, reply.get("quota") or {}
    rows = []
    for key, label in QUOTA_FIELDS:
        used, cap = usage.get(key, 0), quota.get(key)
        text = used_of(used, cap)
        full = cap is not None and isinstance(used, int | float) and used >= cap
        rows.append([label, style.paint(text, RED if full else None)])
    head = f"{style.bold('tenant')} {reply.get('tenant', '?')}  (at {when(reply.get('at'))})"
    return head + "\n" + table(["RESOURCE", "USED"], rows, style)
