"""The long-running commands: watch (live events), simulate-nodes, ping (a scatter-gather)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Mapping
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from services.cli import render
from services.cli.client import EXIT_UNREACHABLE, CliError, ensure_allowed
from services.cli.commands import pages
from services.cli.output import Io
from services.simnodes.fleet import Fleet

_dec = msgspec.json.Decoder()

WATCHED: tuple[str, ...] = (*s.JOBS.subjects, *s.PLACEMENTS.subjects, *s.CLUSTERS.subjects)
"""What ``watch`` follows: every job, placement and cluster event (not node status, not requests)."""
TERMINAL_EVENTS = frozenset({s.JOB_REJECTED, s.PLACEMENT_FAILED, s.JOB_COMPLETED, s.JOB_EXPIRED, s.CLUSTER_TORN_DOWN})


async def cmd_watch(a: argparse.Namespace, nc: Client, io: Io) -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(msg: Msg) -> None:
        try:
            event = _dec.decode(msg.data)
        except msgspec.DecodeError:
            return
        if isinstance(event, dict) and (a.job_id is None or event.get("job_id") == a.job_id):
            queue.put_nowait(event)

    subjects = WATCHED + ((s.NODE_STATUS_ALL, s.NODE_DRAINING_ALL) if a.nodes else ())
    subs = [await nc.subscribe(subject, cb=on_event) for subject in subjects]
    await ensure_allowed(nc)  # subscribed before history is read (nothing falls in between), and allowed to
    seen: set[str] = set()
    shown = 0
    if a.job_id and a.history:
        # job.events answers in pages (bounded by count and bytes): follow the cursor to the end
        async for page in pages(nc, s.JOB_EVENTS, {"job_id": a.job_id}, timeout=a.timeout, every=True):
            for event in page.get("events") or []:
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
    fleet = Fleet(a.count, a.seed, prefix=a.prefix, offset=a.offset)
    if not io.as_json:
        io.note(f"publishing the status of {a.count} simulated node(s) every {a.interval:g} s (Ctrl-C stops)")
    stop = _stop_on_signals()
    rounds = 0
    try:
        while True:
            statuses = fleet.tick()
            for status in statuses:
                await nc.publish(ev.subject_of(status), ev.encode(status))
            await ensure_allowed(nc)
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
