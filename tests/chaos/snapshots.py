"""Placement killed -9 around its snapshot (issue #21): once right after a snapshot was stored
(the restart loads it and follows PLACEMENTS from the sequence after it), and once mid-snapshot,
between the object store's chunk and its meta (the slot being written is left as it was, so the
restart loads the other, older slot and follows a longer tail). Snapshots are taken every
``SNAPSHOT_EVERY_S`` for this row; the load goes on throughout and the checker judges the end.

Whether a kill landed mid-write is checked, not assumed: after it, neither slot's meta names the
chunk's object (nats-py writes chunks first, then the meta naming them). The kill is tried again
at later snapshots until one lands mid-write (``MID_TRIES``)."""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from schemas import subjects as s
from services.placement import snapshot as snap
from services.runtime.snapshots import SLOTS
from tests.chaos.living import Injected
from tests.chaos.load import Load
from tests.support.servers import wait_for_services
from tests.support.system import System

SNAPSHOT_EVERY_S = 0.5
SETTINGS = {"snapshot_every_s": SNAPSHOT_EVERY_S}
MID_TRIES = 8
_META_OF_SLOT = {
    s.SNAPSHOT_META.removesuffix(">") + base64.urlsafe_b64encode(f"{snap.OWNER}.{slot}".encode()).decode()
    for slot in SLOTS
}


async def _kill_on(nc: Client, sysm: System, subject: str, hit: Callable[[Msg], bool], timeout: float) -> Msg | None:
    """Kill placement -9 from the message handler of the first message on ``subject`` that ``hit``
    accepts (no await between seeing it and the kill); the message, or None after ``timeout``."""
    seen: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def handler(msg: Msg) -> None:
        if not seen.done() and hit(msg):
            sysm.procs["placement"][-1].kill()
            seen.set_result(msg)

    sub = await nc.subscribe(subject, cb=handler)
    try:
        return await asyncio.wait_for(seen, timeout)
    except TimeoutError:
        return None
    finally:
        await sub.unsubscribe()


async def _restart(sysm: System, nc: Client) -> None:
    sysm.spawn("placement")
    await wait_for_services(nc, ["placement"], timeout=60)


async def _slot_nuids(nc: Client) -> set[str]:
    store = await nc.jetstream().object_store(s.SNAPSHOTS.name)
    nuids = set()
    for slot in SLOTS:
        try:
            nuids.add((await store.get_info(f"{snap.OWNER}.{slot}")).nuid)
        except NotFoundError:  # a slot not written yet
            continue
    return nuids


async def kill_around_snapshots(sysm: System, nc: Client, load: Load, after: float) -> Injected:
    await asyncio.sleep(after)
    faults = 0
    after_meta = await _kill_on(nc, sysm, s.SNAPSHOT_META, lambda m: m.subject in _META_OF_SLOT, timeout=30)
    if after_meta is None:
        return Injected(0, None, "placement stored no snapshot within 30 s")
    faults += 1
    sys.stderr.write(f"   killed placement right after its snapshot ({after_meta.subject})\n")
    await _restart(sysm, nc)

    owner = snap.OWNER.encode()
    for attempt in range(1, MID_TRIES + 1):
        # the stored bytes are a CRC-32 then the msgpack envelope, whose first field is the owner
        chunk = await _kill_on(nc, sysm, s.SNAPSHOT_CHUNKS, lambda m: owner in m.data[:64], timeout=30)
        if chunk is None:
            return Injected(faults, None, "placement wrote no snapshot chunk within 30 s")
        faults += 1
        nuid = chunk.subject.rsplit(".", 1)[-1]
        mid = nuid not in await _slot_nuids(nc)
        sys.stderr.write(f"   kill {attempt} at a snapshot chunk: {'mid-write' if mid else 'after its meta'}\n")
        await _restart(sysm, nc)
        if mid:
            return Injected(faults)
    return Injected(faults, None, f"no kill landed between a snapshot's chunk and its meta in {MID_TRIES} tries")
