"""NATS users of ``nats.conf`` and their development passwords, overridable from the environment.

``nats.conf`` names one user per role and reads each password from the environment
(``password: $NATS_MANAGER_PASSWORD``): nats-server refuses to start when one is unset.
Whatever starts nats-server (the dev stack, the test fixtures, ``make cluster``) fills
in the development defaults below for those that are not set, and hands the
``services`` credentials to the services as ``NATS_USER``/``NATS_PASSWORD``.

nats-server parses an environment value as a configuration value, so a password must
be one plain token (a letter first, then letters, digits, ``-``, ``_``, ``.``): a
number, ``true`` or a value with spaces or ``#`` would be read as something else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from typing import Literal

Role = Literal["services", "manager", "node", "monitor", "console", "admin", "sys", "acme", "globex"]

ROLES: tuple[Role, ...] = ("services", "manager", "node", "monitor", "console", "admin", "sys", "acme", "globex")
"""The user name of each role equals the role; ``sys`` is the system account's user; ``acme`` and
``globex`` are the users of the two example tenant accounts ``ACME`` and ``GLOBEX`` (§8.4)."""

DEV_PASSWORDS: dict[Role, str] = {
    "services": "dev-services",
    "manager": "dev-manager",
    "node": "dev-node",
    "monitor": "dev-monitor",
    "console": "dev-console",
    "admin": "dev-admin",
    "sys": "dev-sys",
    "acme": "dev-acme",
    "globex": "dev-globex",
}

_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")


def password_variable(role: Role) -> str:
    """The environment variable nats.conf reads the role's password from (``NATS_SYSTEM_PASSWORD`` for sys)."""
    return "NATS_SYSTEM_PASSWORD" if role == "sys" else f"NATS_{role.upper()}_PASSWORD"


def password(role: Role, env: Mapping[str, str] | None = None) -> str:
    """The role's password: its environment variable, else the development default."""
    e = os.environ if env is None else env
    value = e.get(password_variable(role)) or DEV_PASSWORDS[role]
    if not _TOKEN.match(value):
        raise ValueError(
            f"{password_variable(role)} must be one token: a letter, then letters, digits, '-', '_' or '.'"
            " (nats-server parses the value as configuration)"
        )
    return value


def server_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every password variable nats.conf needs, from ``env`` (default ``os.environ``) or the dev defaults."""
    return {password_variable(role): password(role, env) for role in ROLES}


def apply_server_defaults(environ: MutableMapping[str, str] | None = None) -> None:
    """Set the unset password variables in ``environ`` (default ``os.environ``), so a nats-server started
    from this process (which inherits the environment) can read nats.conf."""
    target = os.environ if environ is None else environ
    for name, value in server_environ(target).items():
        target.setdefault(name, value)


def client_environ(role: Role = "services", env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``NATS_USER``/``NATS_PASSWORD`` for a process connecting as ``role`` (read by runtime Settings)."""
    return {"NATS_USER": role, "NATS_PASSWORD": password(role, env)}
