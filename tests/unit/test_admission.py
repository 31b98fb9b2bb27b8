"""Load shedding's verdict (pure): refuse only above the limit; 0 turns it off."""

from __future__ import annotations

from services.gateway.admission import verdict


def test_refuses_only_above_the_limit_and_never_when_off() -> None:
    assert verdict(0, 100) is None
    assert verdict(100, 100) is None
    refusal = verdict(101, 100)
    assert refusal is not None and refusal.code == 503
    assert "101 jobs are waiting" in refusal.message and "request_id" in refusal.message
    assert verdict(10**9, 0) is None
