from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.runtime.snapshots import due, newest, seal, unseal

NOW = datetime(2026, 11, 30, tzinfo=UTC)


@given(body=st.binary(max_size=2000), flip=st.integers(min_value=0))
def test_any_flipped_byte_is_caught(body: bytes, flip: int) -> None:
    data = bytearray(seal("o", 1, 1, {"S": 5}, body, NOW))
    assert unseal(bytes(data), "o", 1) is not None
    data[flip % len(data)] ^= 0xFF
    assert unseal(bytes(data), "o", 1) is None


def test_owner_and_version_must_match() -> None:
    data = seal("placement", 3, 7, {}, b"x", NOW)
    assert unseal(data, "gateway", 3) is None
    assert unseal(data, "placement", 4) is None
    env = unseal(data, "placement", 3)
    assert env is not None and env.generation == 7


def test_newest_skips_invalid_slots() -> None:
    a, b = unseal(seal("o", 1, 4, {}, b"a", NOW), "o", 1), unseal(seal("o", 1, 5, {}, b"b", NOW), "o", 1)
    assert newest([a, b]) is b and newest([a, None]) is a and newest([None, None]) is None


def test_due_needs_something_folded_and_then_time_or_count() -> None:
    assert not due(0, 0.0, 1000.0, 60, 10)
    assert due(1, 0.0, 60.0, 60, 10)
    assert not due(9, 0.0, 59.0, 60, 10)
    assert due(10, 0.0, 1.0, 60, 10)
