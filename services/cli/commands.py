"""The request-reply commands: submit, get, list, cancel, complete, nodes, drain, undrain."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

from nats.aio.client import Client

from schemas import subjects as s
from services.cli import jobspec, render
from services.cli.client import CliError, request
from services.cli.output import Io


class Table(Protocol):
    """A page's items as text (``render.jobs_table``, ``render.nodes_table``)."""

    def __call__(self, items: Sequence[Mapping[str, Any]], style: render.Style, /, *, header: bool = True) -> str: ...


async def cmd_submit(a: argparse.Namespace, nc: Client, io: Io) -> None:
    body = jobspec.build(a)
    headers = {s.MSG_ID_HEADER: a.msg_id} if a.msg_id else None
    if a.wait:
        reply = await request(nc, s.PLACEMENT_REQUEST, body, timeout=a.timeout, headers=headers)
        if io.as_json:
            io.json(reply)
        else:
            io.text(render.event_line(reply, io.style))
        return
    reply = await request(nc, s.JOB_SUBMIT, body, timeout=a.timeout, headers=headers)
    state_reply(reply, io)
    if not io.as_json:
        io.note(f"follow it with: natsched watch {reply.get('job_id')}")


async def cmd_get(a: argparse.Namespace, nc: Client, io: Io) -> None:
    job = await request(nc, s.JOB_GET, {"job_id": a.job_id}, timeout=a.timeout)
    if io.as_json:
        io.json(job)
    else:
        io.text(render.job_detail(job, io.style))


async def pages(nc: Client, subject: str, body: dict[str, Any], *, timeout: float, every: bool) -> AsyncIterator[Any]:
    """The reply pages of a listing: the first only, or (``every``) each one, following ``next``."""
    req = dict(body)
    while True:
        page = await request(nc, subject, req, timeout=timeout)
        yield page
        if not every or not page.get("next"):
            return
        req["after"] = page["next"]


async def show_pages(
    a: argparse.Namespace, nc: Client, io: Io, subject: str, body: dict[str, Any], key: str, table: Table
) -> tuple[int, str | None]:
    """Print a listing's pages (``--all``: every one) as JSON lines or one table; how many items
    were shown, and the cursor of the next page (None after the last)."""
    if a.after:
        body = {**body, "after": a.after}
    shown = 0
    last: Any = {}
    async for page in pages(nc, subject, body, timeout=a.timeout, every=a.all):
        last = page
        items = page.get(key) or []
        if io.as_json:
            io.json(page)
        else:
            io.text(table(items, io.style, header=shown == 0))
        shown += len(items)
    return shown, last.get("next")


async def cmd_list(a: argparse.Namespace, nc: Client, io: Io) -> None:
    body: dict[str, Any] = {"limit": a.limit}
    if a.state:
        body["state"] = a.state
    shown, more = await show_pages(a, nc, io, s.JOB_LIST, body, "jobs", render.jobs_table)
    if a.all and not io.as_json:
        io.note(f"{shown} job(s)")
    elif more and not io.as_json:
        io.note(f"more: natsched list --after {more}" + (f" --state {a.state}" if a.state else "") + " (or --all)")


async def cmd_cancel(a: argparse.Namespace, nc: Client, io: Io) -> None:
    reply = await request(nc, s.JOB_CANCEL, {"job_id": a.job_id}, timeout=a.timeout)
    state_reply(reply, io)


async def cmd_complete(a: argparse.Namespace, nc: Client, io: Io) -> None:
    body: dict[str, Any] = {"job_id": a.job_id, "outcome": a.outcome}
    if a.message:
        body["message"] = a.message
    reply = await request(nc, s.JOB_COMPLETE, body, timeout=a.timeout)
    state_reply(reply, io)


def state_reply(reply: Mapping[str, Any], io: Io) -> None:
    if io.as_json:
        io.json(reply)
    else:
        io.text(f"{reply.get('job_id')}  {io.style.state(str(reply.get('state')))}")


async def cmd_nodes(a: argparse.Namespace, nc: Client, io: Io) -> None:
    """The fleet's summary, then its first page of nodes (``--all``: every page, streamed)."""
    filters: dict[str, Any] = {}
    if a.state:
        filters["state"] = a.state
    if a.label:
        filters["label"] = a.label
    summary = await request(nc, s.NODE_LIST, {**filters, "summary": True}, timeout=a.timeout)
    if io.as_json:
        io.json(summary)
    else:
        io.note(render.nodes_summary(summary.get("summary") or {}))
    shown, more = await show_pages(a, nc, io, s.NODE_LIST, {**filters, "limit": a.limit}, "nodes", render.nodes_table)
    if not io.as_json:
        io.note(f"{shown} node(s) shown" + (f"; more: natsched nodes --after {more} (or --all)" if more else ""))


async def cmd_drain(a: argparse.Namespace, nc: Client, io: Io) -> None:
    """``node.drain``: the node takes no new replicas and its replicas move (reason ``drain``)."""
    body: dict[str, Any] = {"node_id": a.node_id}
    if a.reason:
        body["reason"] = a.reason
    await _drain_request(a, nc, io, s.NODE_DRAIN, body)


async def cmd_undrain(a: argparse.Namespace, nc: Client, io: Io) -> None:
    """``node.undrain``: the node takes replicas again."""
    await _drain_request(a, nc, io, s.NODE_UNDRAIN, {"node_id": a.node_id})


async def _drain_request(a: argparse.Namespace, nc: Client, io: Io, subject: str, body: dict[str, Any]) -> None:
    try:
        reply = await request(nc, subject, body, timeout=a.timeout)
    except CliError as e:
        code = ((e.body or {}).get("error") or {}).get("code") if isinstance(e.body, dict) else None
        if code == 404:
            e.message += " (`natsched nodes` lists the nodes that have reported)"
        raise
    if io.as_json:
        io.json(reply)
        return
    node, draining = reply.get("node_id"), reply.get("draining")
    io.text(f"{node}  {io.style.state('draining' if draining else 'active')}")
    if draining:
        io.note(f"its replicas move elsewhere; follow them with: natsched watch (undo: natsched undrain {node})")
