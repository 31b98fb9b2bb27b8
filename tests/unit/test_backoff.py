"""services.runtime.backoff: the one retry-delay formula and the stoppable sleep."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime import app
from services.runtime.backoff import delay, sleep_unless


@pytest.mark.parametrize(
    ("attempt", "kwargs", "seconds"),
    [
        (1, {}, 0.2),
        (2, {}, 0.4),
        (5, {}, 3.2),
        (6, {}, 5.0),
        (0, {}, 0.2),  # before the first retry: as the first
        (-3, {}, 0.2),
        (10**6, {}, 5.0),  # no overflow however long an outage lasts
        (3, {"base": 0.5, "cap": 30.0}, 2.0),
        (3, {"base": 0.2, "factor": 1.5, "cap": 2.0}, 0.45),
        (7, {"base": 0.2, "factor": 1.5, "cap": 2.0}, 2.0),
        (4, {"base": 1.0, "cap": 30.0}, 8.0),
        (6, {"base": 1.0, "cap": 30.0}, 30.0),
    ],
)
def test_delay(attempt: int, kwargs: dict[str, float], seconds: float) -> None:
    assert delay(attempt, **kwargs) == pytest.approx(seconds)


@pytest.mark.parametrize("attempt", [1, 3, 40])
def test_jitter_only_shortens_within_its_fraction(attempt: int) -> None:
    full = delay(attempt, jitter=0.0)
    samples = [delay(attempt, jitter=0.25) for _ in range(200)]
    assert all(0.75 * full <= d <= full for d in samples)
    assert len(set(samples)) > 1


def test_first_connect_budget_matches_the_docstring() -> None:
    """app.start_runtime's retry around nats.connect: 60 tries, ~112 s of waiting in all."""
    waits = [app.first_connect_delay(attempt) for attempt in range(1, app.FIRST_CONNECT_TRIES + 1)]
    assert app.FIRST_CONNECT_TRIES == 60
    assert waits[:3] == pytest.approx([0.2, 0.3, 0.45])
    assert sum(waits) == pytest.approx(112.15625)
    assert "112 s" in (app.start_runtime.__doc__ or "")


async def test_sleep_unless_returns_early_when_stopped() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_soon(stop.set)
    assert await sleep_unless(stop, 60) is True


async def test_sleep_unless_sleeps_the_whole_time_otherwise() -> None:
    assert await sleep_unless(asyncio.Event(), 0.01) is False
    assert await sleep_unless(None, 0.01) is False
