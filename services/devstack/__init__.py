"""Dev stack: real nats-server, PostgreSQL, moto and service processes for `make run` and the tests."""

from services.devstack.moto import Moto
from services.devstack.nats import NatsServer
from services.devstack.ports import free_port
from services.devstack.postgres import Postgres, database_url_from_env
from services.devstack.procs import ServiceProcess, spawn_service

__all__ = [
    "Moto",
    "NatsServer",
    "Postgres",
    "ServiceProcess",
    "database_url_from_env",
    "free_port",
    "spawn_service",
]
