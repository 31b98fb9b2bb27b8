"""``natsched``: submit, get, list, cancel, complete, nodes, watch, simulate-nodes, ping.

Tables and colours on a terminal, plain JSON with ``--json``. Connects to ``NATS_URL``
as ``NATS_USER``/``NATS_PASSWORD`` (or ``--server``/``--user``/``--password``); without
them, as the development user ``manager`` (``node`` for ``simulate-nodes``, ``monitor`` for
``ping``) of nats.conf.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import IO, Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from services.cli import jobspec, render
from services.cli.client import EXIT_UNREACHABLE, CliError, Target, connect, request
from services.runtime.credentials import Role
from services.simnodes.fleet import Fleet

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()

WATCHED: tuple[str, ...] = (*s.JOBS.subjects, *s.PLACEMENTS.subjects, *s.CLUSTERS.subjects)
"""What ``watch`` follows: every job, placement and cluster event (not node status, not requests)."""
TERMINAL_EVENTS = frozenset({s.JOB_REJECTED, s.PLACEMENT_FAILED, s.JOB_COMPLETED, s.JOB_EXPIRED, s.CLUSTER_TORN_DOWN})


class Io:
    """Where a command writes, and how (JSON or text with optional colours)."""

    def __init__(self, out: IO[str], err: IO[str], *, as_json: bool, colour: bool) -> None:
        self.out, self.err, self.as_json = out, err, as_json
        self.style = render.Style(colour)

    def json(self, value: Any) -> None:
        self.out.write(_enc.encode(value).decode() + "\n")
        self.out.flush()

    def text(self, text: str) -> None:
        self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """Progress and hints: on stderr, so stdout stays parseable."""
        self.err.write(text + "\n")
        self.err.flush()


Command = Callable[[argparse.Namespace, Client, Io], Awaitable[None]]


# --- commands ---------------------------------------------------------------
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
    if io.as_json:
        io.json(reply)
    else:
        io.text(f"{reply.get('job_id')}  {io.style.state(str(reply.get('state')))}")
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


async def cmd_list(a: argparse.Namespace, nc: Client, io: Io) -> None:
    body: dict[str, Any] = {"limit": a.limit}
    if a.state:
        body["state"] = a.state
    if a.after:
        body["after"] = a.after
    shown = 0
    last: Any = {}
    async for page in pages(nc, s.JOB_LIST, body, timeout=a.timeout, every=a.all):
        last = page
        jobs = page.get("jobs") or []
        if io.as_json:
            io.json(page)
        else:
            io.text(render.jobs_table(jobs, io.style, header=shown == 0))
        shown += len(jobs)
    if a.all and not io.as_json:
        io.note(f"{shown} job(s)")
    elif last.get("next") and not io.as_json:
        io.note(
            f"more: natsched list --after {last['next']}" + (f" --state {a.state}" if a.state else "") + " (or --all)"
        )


async def cmd_cancel(a: argparse.Namespace, nc: Client, io: Io) -> None:
    reply = await request(nc, s.JOB_CANCEL, {"job_id": a.job_id}, timeout=a.timeout)
    _state_reply(reply, io)


async def cmd_complete(a: argparse.Namespace, nc: Client, io: Io) -> None:
    body: dict[str, Any] = {"job_id": a.job_id, "outcome": a.outcome}
    if a.message:
        body["message"] = a.message
    reply = await request(nc, s.JOB_COMPLETE, body, timeout=a.timeout)
    _state_reply(reply, io)


def _state_reply(reply: Mapping[str, Any], io: Io) -> None:
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
    body: dict[str, Any] = {**filters, "limit": a.limit}
    if a.after:
        body["after"] = a.after
    shown = 0
    last: Any = {}
    async for page in pages(nc, s.NODE_LIST, body, timeout=a.timeout, every=a.all):
        last = page
        nodes = page.get("nodes") or []
        if io.as_json:
            io.json(page)
        else:
            io.text(render.nodes_table(nodes, io.style, header=shown == 0))
        shown += len(nodes)
    if not io.as_json:
        more = f"; more: natsched nodes --after {last['next']} (or --all)" if last.get("next") else ""
        io.note(f"{shown} node(s) shown{more}")


async def cmd_watch(a: argparse.Namespace, nc: Client, io: Io) -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(msg: Msg) -> None:
        try:
            event = _dec.decode(msg.data)
        except msgspec.DecodeError:
            return
        if isinstance(event, dict) and (a.job_id is None or event.get("job_id") == a.job_id):
            queue.put_nowait(event)

    subjects = WATCHED + ((s.NODE_STATUS_ALL,) if a.nodes else ())
    subs = [await nc.subscribe(subject, cb=on_event) for subject in subjects]
    await nc.flush()  # subscribed before history is read: nothing falls in between
    seen: set[str] = set()
    shown = 0
    if a.job_id and a.history:
        past = await request(nc, s.JOB_EVENTS, {"job_id": a.job_id}, timeout=a.timeout)
        for event in past.get("events") or []:
            shown += _show(event, io, seen)
    io.note(f"watching {'job ' + a.job_id if a.job_id else 'every job'} (Ctrl-C stops)")
    stop = _stop_on_signals()
    try:
        while a.count is None or shown < a.count:
            get = asyncio.ensure_future(queue.get())
            waiting: set[asyncio.Future[Any]] = {get, stop}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                break
            event = get.result()
            shown += _show(event, io, seen)
            if a.job_id and a.until_done and event.get("type") in TERMINAL_EVENTS:
                break
    finally:
        stop.cancel()
        for sub in subs:
            await sub.unsubscribe()


def _show(event: dict[str, Any], io: Io, seen: set[str]) -> int:
    key = event.get("event_id")
    if key:
        if key in seen:
            return 0
        seen.add(key)
    if io.as_json:
        io.json(event)
    else:
        io.text(render.event_line(event, io.style))
    return 1


def _stop_on_signals() -> asyncio.Future[None]:
    """A future done on SIGINT/SIGTERM (a clean exit code instead of a traceback)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not fut.done():
            fut.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, done)

    def restore(_: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)

    fut.add_done_callback(restore)
    return fut


async def cmd_simulate_nodes(a: argparse.Namespace, nc: Client, io: Io) -> None:
    fleet = Fleet(a.count, a.seed, prefix=a.prefix)
    if not io.as_json:
        io.note(f"publishing the status of {a.count} simulated node(s) every {a.interval:g} s (Ctrl-C stops)")
    stop = _stop_on_signals()
    rounds = 0
    try:
        while True:
            statuses = fleet.tick()
            for status in statuses:
                await nc.publish(ev.subject_of(status), ev.encode(status))
            await nc.flush()
            rounds += 1
            if io.as_json:
                io.json({"round": rounds, "nodes": len(statuses)})
            if a.rounds is not None and rounds >= a.rounds:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stop), a.interval)
            if stop.done():
                break
    finally:
        stop.cancel()


async def cmd_ping(a: argparse.Namespace, nc: Client, io: Io) -> None:
    """Every instance answering ``$SRV.INFO[.NAME]`` within the timeout (a scatter-gather, like
    ``nats micro ls``); with ``--host`` done at the first instance whose ``instance_id`` starts with
    ``HOST-`` (a container's health check: is *this* container's service answering?)."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_reply(msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            queue.put_nowait(_dec.decode(msg.data))

    def mine(info: Mapping[str, Any]) -> bool:
        return str((info.get("metadata") or {}).get("instance_id", "")).startswith(f"{a.host}-")

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    await nc.publish(f"$SRV.INFO.{a.name}" if a.name else "$SRV.INFO", b"", reply=inbox)
    found: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + a.timeout
    try:
        while (left := deadline - loop.time()) > 0:
            try:
                info = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            if a.host is None or mine(info):
                found.append(info)
                if a.host is not None:
                    break
    finally:
        await sub.unsubscribe()
    if not found:
        who = f"{a.name or 'service'}" + (f" on host {a.host}" if a.host else "")
        raise CliError(f"no {who} answered within {a.timeout:g} s", EXIT_UNREACHABLE)
    if io.as_json:
        io.json(found)
        return
    rows = [
        [
            str(i.get("name")),
            str(i.get("version")),
            str(i.get("id")),
            str((i.get("metadata") or {}).get("instance_id", "")),
            ",".join(str(e.get("subject")) for e in i.get("endpoints") or []),
        ]
        for i in sorted(found, key=lambda i: (str(i.get("name")), str(i.get("id"))))
    ]
    io.text(render.table(["NAME", "VERSION", "ID", "INSTANCE", "ENDPOINTS"], rows, io.style))


# --- parser -----------------------------------------------------------------
COMMANDS: dict[str, tuple[Command, Role]] = {
    "submit": (cmd_submit, "manager"),
    "get": (cmd_get, "manager"),
    "list": (cmd_list, "manager"),
    "cancel": (cmd_cancel, "manager"),
    "complete": (cmd_complete, "manager"),
    "nodes": (cmd_nodes, "manager"),
    "watch": (cmd_watch, "manager"),
    "simulate-nodes": (cmd_simulate_nodes, "node"),
    "ping": (cmd_ping, "monitor"),
}


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection and output")
    g.add_argument("-s", "--server", help="NATS URL(s), comma-separated (default: $NATS_URL or nats://127.0.0.1:4222)")
    g.add_argument("--user", help="NATS user (default: $NATS_USER, else the development user of the command)")
    g.add_argument("--password", help="NATS password (default: $NATS_PASSWORD, else the development password)")
    g.add_argument("--timeout", type=float, help="seconds to wait for an answer (default 5; 15 for submit --wait)")
    g.add_argument("--json", action="store_true", help="plain JSON on stdout (one object per line for watch)")
    g.add_argument("--no-color", action="store_true", help="no colours (also: NO_COLOR set, or not a terminal)")

    p = argparse.ArgumentParser(
        prog="natsched",
        description="Submit and follow jobs of the natsched cluster scheduler (talks NATS; see docs/OPERATIONS.md).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("submit", parents=[common], help="submit a job (flags or a JSON/TOML file)")
    jobspec.add_flags(c)
    c.add_argument("--msg-id", help="idempotency key sent as the Nats-Msg-Id header (wins over --request-id)")
    c.add_argument("--wait", action="store_true", help="ask placement.request: wait for the decision and print it")

    c = sub.add_parser("get", parents=[common], help="a job's record: state, placement, instances, history")
    c.add_argument("job_id")

    c = sub.add_parser("list", parents=[common], help="jobs, newest first")
    c.add_argument("--state", help="only jobs in this state (pending, placed, failed, ...)")
    c.add_argument("--limit", type=int, default=100, help="jobs per page, 1-1000 (default 100)")
    c.add_argument("--after", help="the cursor printed by the previous page")
    c.add_argument("--all", action="store_true", help="every page, following the cursor")

    c = sub.add_parser("cancel", parents=[common], help="cancel a job")
    c.add_argument("job_id")

    c = sub.add_parser("complete", parents=[common], help="report that a job ended")
    c.add_argument("job_id")
    c.add_argument("--outcome", choices=["succeeded", "failed"], default="succeeded")
    c.add_argument("--message", help="why (free text)")

    c = sub.add_parser("nodes", parents=[common], help="the fleet's summary and its nodes: state, free, reserved")
    c.add_argument("--state", choices=["active", "inactive", "draining", "down"], help="only nodes in this state")
    c.add_argument("--label", help="only nodes with this label, KEY=VALUE")
    c.add_argument("--limit", type=int, default=500, help="nodes per page, 1-5000 (default 500)")
    c.add_argument("--after", help="the cursor printed by the previous page")
    c.add_argument("--all", action="store_true", help="every page, following the cursor")

    c = sub.add_parser("watch", parents=[common], help="live job, placement and cluster events")
    c.add_argument("job_id", nargs="?", help="only this job's events")
    c.add_argument("--history", action="store_true", help="first print the job's past events (job.events)")
    c.add_argument("--until-done", action="store_true", help="stop at the job's final event")
    c.add_argument("--count", type=int, help="stop after this many events")
    c.add_argument("--nodes", action="store_true", help="node status too")

    c = sub.add_parser("simulate-nodes", parents=[common], help="publish the status of N simulated nodes")
    c.add_argument("count", type=int, metavar="N")
    c.add_argument("--interval", type=float, default=3.0, help="seconds between rounds (default 3)")
    c.add_argument("--rounds", type=int, help="stop after this many rounds (default: until Ctrl-C)")
    c.add_argument("--seed", type=int, default=42)
    c.add_argument("--prefix", default="node", help="node ids are PREFIX-000, PREFIX-001, ...")
    c = sub.add_parser("ping", parents=[common], help="the service instances that answer (default timeout 1 s)")
    c.add_argument("name", nargs="?", help="gateway, intake, placement, metadata, provisioner, teardown")
    c.add_argument("--host", help="succeed only if an instance on this host answers (container health checks)")
    return p


async def run(
    argv: list[str],
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Parse ``argv`` and run the command; returns the exit code (argparse exits 2 on bad usage)."""
    out = out or sys.stdout
    err = err or sys.stderr
    e = os.environ if env is None else env
    a = parser().parse_args(argv)
    if a.timeout is None:  # placement.request answers 504 itself after its own wait (5 s by default)
        a.timeout = 15.0 if getattr(a, "wait", False) else 1.0 if a.command == "ping" else 5.0
    command, role = COMMANDS[a.command]
    colour = not a.no_color and not a.json and "NO_COLOR" not in e and out.isatty()
    io = Io(out, err, as_json=a.json, colour=colour)
    try:
        target = Target.resolve(a.server, a.user, a.password, default_role=role, env=e)
        nc = await connect(target, reconnect=a.command in ("watch", "simulate-nodes"))
        try:
            await command(a, nc, io)
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()
    except CliError as ex:
        if a.json and ex.body is not None:
            io.json(ex.body)
        err.write(f"natsched: {ex.message}\n")
        return ex.exit_code
    except (jobspec.SpecError, ValueError) as ex:
        err.write(f"natsched: {ex}\n")
        return 2
    except ConnectionError as ex:
        err.write(f"natsched: lost the connection to NATS: {ex}\n")
        return EXIT_UNREACHABLE
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``natsched`` console script."""
    try:
        return asyncio.run(run(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return 130
