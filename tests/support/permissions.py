"""Subjects for checking nats.conf's permissions on a real server: concrete subjects for the patterns of
schemas/subjects.py, and the sentinel no role may publish to. A denied operation's violation arrives
asynchronously; publishing to the sentinel and waiting for its own violation shows every earlier one has
arrived."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from schemas import subjects as s

PROBE = "probe"
SENTINEL = "sentinel.no-role-may-publish-here"


def concrete(subject: str) -> str:
    """A subject a pattern of schemas/subjects.py matches (``node.status.*`` -> ``node.status.probe``)."""
    return subject.replace("*", PROBE)


REQUESTS = set(s.REQUEST_SUBJECTS)
"""Every request subject."""
EVENTS = {concrete(subject) for stream in s.STREAMS if stream is not s.TENANT_PLACEMENTS for subject in stream.subjects}
"""A concrete subject for every event subject of every stream but the tenants' copies (which only
the relay writes, through its capture subject)."""
WATCHED = {concrete(subject) for stream in (s.JOBS, s.PLACEMENTS, s.CLUSTERS, s.NODES) for subject in stream.subjects}
"""The events of the four streams a read-only watcher (the manager, the console) may subscribe to."""


class Violations:
    """The permission violations the server reports to a client (its ``error_cb``), in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    async def cb(self, e: Exception) -> None:
        self.queue.put_nowait(str(e).lower())

    async def settle(self, client: Client) -> list[str]:
        """The violations of what ``client`` sent so far: those before the sentinel's own."""
        await client.publish(SENTINEL, b"")
        seen = []
        while f'"{SENTINEL}"' not in (e := await asyncio.wait_for(self.queue.get(), 10)):
            assert "permissions violation" in e, e
            seen.append(e)
        return seen
