"""compose.yaml cannot run here (no Docker): check its structure against the repo instead."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.runtime import credentials

REPO = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP = ("gateway", "intake", "placement", "metadata", "provisioner", "teardown", "simnodes")
NATS = ("nats", "nats-2", "nats-3")
DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def words(command: Any) -> list[str]:
    """Every word of a command, also inside ``sh -c "..."`` strings."""
    if isinstance(command, dict):  # healthcheck
        command = command.get("test", [])
    items = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    out = []
    for item in items:
        out += shlex.split(item) if " " in item else [item]
    return out


def modules(command: Any) -> list[str]:
    w = words(command)
    return [w[i + 1] for i, word in enumerate(w[:-1]) if word == "-m"]


def test_every_part_of_the_system_is_there_with_a_restart_policy() -> None:
    assert set(SERVICES) == {*APP, *NATS, "postgres", "moto"}
    for name, svc in SERVICES.items():
        assert svc.get("restart") == "unless-stopped", name


@pytest.mark.parametrize("name", [n for n in SERVICES if n != "simnodes"])
def test_health_checks(name: str) -> None:
    check = SERVICES[name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and not check.get("disable"), name


@pytest.mark.parametrize("name", APP)
def test_each_command_and_health_check_runs_a_module_of_the_repo(name: str) -> None:
    svc = SERVICES[name]
    found = modules(svc["command"]) + modules(svc.get("healthcheck", {}))
    assert f"services.{name}" in found
    for module in found:
        package = REPO / module.replace(".", "/")
        assert (package / "__main__.py").is_file(), f"{name}: {module} has no __main__.py"
    if name != "simnodes":  # the health check names this container's own service
        assert svc["environment"]["SERVICE"] == name


def test_every_mounted_file_exists_and_nats_configs_are_mounted_where_commands_look() -> None:
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source}"
        if name in NATS:
            mounted = {v.split(":")[1] for v in svc["volumes"]}
            config = words(svc["command"])[1]
            for default in DEFAULT.findall(config):  # ${NATS_CONFIG:-nats-container.conf}
                config = config.replace(f"${{{default[0]}:-{default[1]}}}", default[1])
            assert config in mounted, name
            assert "/etc/nats/nats-cluster.conf" in mounted and "/etc/nats/nats.conf" in mounted


def test_every_password_nats_conf_reads_is_given_to_the_nats_containers() -> None:
    wanted = set(re.findall(r"\$(NATS_\w+_PASSWORD)", (REPO / "nats.conf").read_text()))
    assert wanted == set(credentials.server_environ({}))
    for name in NATS:
        env = SERVICES[name]["environment"]
        assert set(env) >= wanted, name
        for variable in wanted:  # default: the development password of credentials.py
            assert env[variable] == f"${{{variable}:-{credentials.server_environ({})[variable]}}}"


def test_services_connect_as_services_and_simnodes_as_node() -> None:
    for name in APP:
        env = SERVICES[name]["environment"]
        role = "node" if name == "simnodes" else "services"
        assert env["NATS_USER"] == role
        assert env["NATS_PASSWORD"] == f"${{{credentials.password_variable(role)}:-dev-{role}}}"
        assert set(SERVICES[name]["depends_on"]) >= {"nats", "postgres", "moto"}


def test_cluster_profile_three_servers_routed_to_each_other_and_three_replicas() -> None:
    for name in ("nats-2", "nats-3"):
        assert SERVICES[name]["profiles"] == ["cluster"]
    names = {words(SERVICES[n]["command"])[words(SERVICES[n]["command"]).index("--name") + 1] for n in NATS}
    assert names == set(NATS)  # unique server names, as clustered JetStream requires
    routes = re.findall(r"nats://([\w-]+):6222", (REPO / "deploy/nats-cluster.conf").read_text())
    assert set(routes) == set(NATS)
    env = dict(
        line.split("=", 1)
        for line in (REPO / "deploy/cluster.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["COMPOSE_PROFILES"] == "cluster" and env["STREAM_REPLICAS"] == "3"
    assert env["NATS_CONFIG"] == "nats-cluster.conf"
    assert re.findall(r"nats://([\w-]+):4222", env["NATS_URL"]) == list(NATS)
    for name in APP:  # what the env file sets is what the services read
        service_env = SERVICES[name]["environment"]
        assert service_env["NATS_URL"].startswith("${NATS_URL:-")
        assert service_env["STREAM_REPLICAS"] == "${STREAM_REPLICAS:-1}"
