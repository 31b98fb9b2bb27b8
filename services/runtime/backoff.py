"""Retry delays, in one place: exponential backoff with a cap and optional jitter, and a
sleep that ends early when the service is stopping.

Every retry loop of the system (first connect, fetch failures, nak delays, database and
EC2 outages, the devstack supervisor) takes its delays from :func:`delay`, so one formula
governs them all; the arguments say how fast each one grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import random


def delay(attempt: int, *, base: float = 0.2, factor: float = 2.0, cap: float = 5.0, jitter: float = 0.0) -> float:
    """The wait before retry number ``attempt`` (1 for the first retry): ``base * factor**(attempt-1)``,
    at most ``cap``, then shortened by up to ``jitter`` (a fraction, 0..1) at random so that
    many clients failing at once do not retry in step."""
    d = min(cap, base * factor ** min(max(0, attempt - 1), 64))
    if jitter:
        d *= 1.0 - random.random() * jitter
    return float(d)


async def sleep_unless(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile; returns whether it is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
