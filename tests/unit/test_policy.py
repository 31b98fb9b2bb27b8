"""Intake's admission policy."""

from __future__ import annotations

import pytest

from schemas.jobs import Defaults, decode_job_request, normalise
from services.intake.policy import admit
from services.runtime.config import load_config

CONFIG = load_config()


def spec(raw: str):  # type: ignore[no-untyped-def]
    return normalise(decode_job_request(raw.encode()), Defaults())


@pytest.mark.parametrize(
    ("raw", "accepted", "field"),
    [
        ('{"name": "a"}', True, None),
        ('{"name": "a", "technology": "unikernel"}', True, None),
        ('{"name": "a", "technology": "fortran"}', False, "technology"),
        ('{"name": "a", "resources": {"cpu": 300}}', False, "resources.cpu"),
        ('{"name": "a", "resources": {"gpu": 17}}', False, "resources.gpu"),
        ('{"name": "a", "cluster": "dedicated", "resources": {"cpu": 64}}', False, "resources"),
        ('{"name": "a", "cluster": "dedicated", "resources": {"cpu": 4, "memory_mb": 16000}}', True, None),
    ],
)
def test_admit(raw: str, accepted: bool, field: str | None) -> None:
    v = admit(spec(raw), CONFIG)
    assert v.accepted is accepted
    assert v.field == field
    assert bool(v.reason) is not accepted


def test_unknown_technology_reason_lists_the_known_ones() -> None:
    v = admit(spec('{"name": "a", "technology": "fortran"}'), CONFIG)
    assert "fortran" in v.reason and "docker" in v.reason
