"""``natsched scale`` and ``natsched plan`` (§8.3): resize a job; ask what would be decided."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from nats.aio.client import Client

from schemas import subjects as s
from services.cli import jobspec, render
from services.cli.client import request
from services.cli.output import Io


async def cmd_scale(a: argparse.Namespace, nc: Client, io: Io) -> None:
    """``job.scale``: answered once the request is stored; placement applies it (latest wins)."""
    body: dict[str, Any] = {"job_id": a.job_id, "replicas": a.replicas}
    headers = {s.MSG_ID_HEADER: a.msg_id} if a.msg_id else None
    reply = await request(nc, s.JOB_SCALE, body, timeout=a.timeout, headers=headers)
    if io.as_json:
        io.json(reply)
        return
    io.text(f"{reply.get('job_id')}  {reply.get('replicas')} replica(s)  {io.style.state(str(reply.get('state')))}")
    io.note(f"follow the new revision with: natsched watch {reply.get('job_id')}")


async def cmd_plan(a: argparse.Namespace, nc: Client, io: Io) -> None:
    """``placement.plan``: what would be decided for this JobSpec now, booking nothing."""
    spec = jobspec.build(a)
    spec.setdefault("name", "plan")  # a plan creates no job: its name matters to nobody
    reply = await request(nc, s.PLACEMENT_PLAN, spec, timeout=a.timeout)
    if io.as_json:
        io.json(reply)
    else:
        io.text(plan_text(reply, io.style))


def plan_text(reply: Mapping[str, Any], style: render.Style) -> str:
    """The decision as tables of assignments, candidates and preemptions, or the failure's explanation."""
    failure = reply.get("failure")
    if failure:
        excluded = {k: v for k, v in (failure.get("excluded") or {}).items() if v}
        lines = [f"{style.state('failed')}  would not fit: {failure.get('reason')}"]
        if excluded:
            lines.append("excluded: " + ", ".join(f"{k} {v}" for k, v in excluded.items()))
        return "\n".join(lines) + "\n"
    decision = reply.get("decision") or {}
    dedicated = any(x.get("instance_type") for x in decision.get("assignments", []))
    out = [style.bold("would place") + "\n"]
    out.append(
        render.table(
            ["REPLICA", "INSTANCE TYPE" if dedicated else "NODE"],
            [
                [str(x.get("replica")), str(x.get("node_id") or x.get("instance_type") or "-")]
                for x in decision.get("assignments", [])
            ],
            style,
        )
    )
    candidates = decision.get("candidates", [])
    if candidates:
        out.append("\n" + style.bold("candidates, best first") + "\n")
        out.append(render.candidates_table(candidates, style, dedicated=dedicated))
    preemptions = reply.get("preemptions") or []
    if preemptions:
        out.append("\n" + style.bold("would preempt") + "\n")
        out.append(render.preempted_table(preemptions, style))
    return "".join(out)


__all__ = ["cmd_plan", "cmd_scale", "plan_text"]
