"""The config Structs share one base: immutable, keyword-only, a misspelt key refused."""

from __future__ import annotations

import msgspec
import pytest

from services.runtime import config as c

CONFIG_STRUCTS = [
    c.Limits,
    c.Timeouts,
    c.PlacementConf,
    c.InstanceType,
    c.AwsConf,
    c.LifecycleConf,
    c.AdmissionConf,
    c.Config,
    c.Settings,
]


@pytest.mark.parametrize("cls", CONFIG_STRUCTS, ids=lambda cls: cls.__name__)
def test_every_config_struct_is_frozen_and_forbids_unknown_fields(cls: type[msgspec.Struct]) -> None:
    assert issubclass(cls, c._Conf)
    assert cls.__struct_config__.frozen
    assert cls.__struct_config__.forbid_unknown_fields


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ({"technologies": ["docker"], "limits": {"max_cpus": 4}}, r"unknown field `max_cpus`.*\$\.limits"),
        ({"technologies": ["docker"], "timeouts": {"node_ttl_s": 0}}, r"\$\.timeouts\.node_ttl_s"),
        ({"technologies": ["docker"], "instance_types": [{"name": "m5", "vcpu": 2}]}, "memory_mb"),
        ({"technologies": ["docker"], "typo": 1}, "unknown field `typo`"),
    ],
)
def test_a_bad_config_names_the_key(toml: dict[str, object], match: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=match):
        msgspec.convert(toml, c.Config)


def test_fields_are_keyword_only_and_immutable() -> None:
    limits = c.Limits(max_gpu=2)
    with pytest.raises(AttributeError):
        limits.max_gpu = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.Limits(1)  # type: ignore[misc]
    assert c.load_config().defaults.technology in c.load_config().technologies


def test_natspy_checks_the_version_pyproject_pins() -> None:
    """natspy refuses any other nats-py than the one its private accesses were checked on: the pin."""
    import tomllib
    from pathlib import Path

    from services.runtime import natspy

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert f"nats-py=={natspy.PINNED}" in pyproject["project"]["dependencies"]
    assert natspy.INSTALLED == natspy.PINNED


def test_node_lost_s_is_never_below_the_ttl() -> None:
    from services.runtime.config import Timeouts

    assert Timeouts(node_ttl_s=120).lost_after_s == 120  # raising the TTL alone never stops a service
    assert Timeouts(node_ttl_s=15, node_lost_s=30).lost_after_s == 30
