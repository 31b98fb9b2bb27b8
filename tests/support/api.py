"""Request/reply to the running services as a client does: request bodies, ``job.submit``, the queries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from schemas import subjects as s
from tests.support.servers import Spawn
from tests.support.waiting import eventually

DEMO = b'{"name": "demo", "replicas": 2, "resources": {"cpu": 1, "memory_mb": 512}}'
"""A ``job.submit`` body: a shared job of 2 replicas."""
LEGACY = b'{"probability_definition": "gs://foo/bar", "initial_number_of_replicas": "2"}'
"""A ``job.submit`` body in the legacy format: a dedicated cluster of 2 instances."""


def job(name: str, cpu: float, **extra: Any) -> bytes:
    """A job body asking for ``cpu`` cores and 512 MB (plus any other fields)."""
    return json.dumps({"name": name, "resources": {"cpu": cpu, "memory_mb": 512}, **extra}).encode()


async def request(nc: Client, subject: str, body: dict[str, Any] | bytes, timeout: float = 10.0) -> tuple[int, Any]:
    """(code, decoded body): 200 for a success reply, else the error code."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = await nc.request(subject, data, timeout=timeout)
    code = int(reply.headers[s.ERROR_CODE_HEADER]) if reply.headers and s.ERROR_CODE_HEADER in reply.headers else 200
    return code, json.loads(reply.data)


async def submit(nc: Client, body: bytes = LEGACY) -> str:
    """``job.submit``, which must succeed; the new job's id."""
    reply = await nc.request(s.JOB_SUBMIT, body, timeout=5)
    assert not (reply.headers or {}).get(s.ERROR_HEADER), reply.data
    job_id: str = json.loads(reply.data)["job_id"]
    return job_id


async def all_jobs(nc: Client, limit: int, state: str | None = None) -> list[str]:
    """Every job id ``job.list`` returns, page by page (``limit`` a page)."""
    ids: list[str] = []
    after: str | None = None
    while True:
        req: dict[str, Any] = {"limit": limit}
        if after:
            req["after"] = after
        if state:
            req["state"] = state
        code, body = await request(nc, s.JOB_LIST, req)
        assert code == 200, body
        assert len(body["jobs"]) <= limit
        ids += [j["job_id"] for j in body["jobs"]]
        after = body["next"]
        if after is None:
            return ids


METADATA_TOML = Path(__file__).with_name("metadata.toml")
"""The ``SCHEDULER_CONFIG`` :func:`start_metadata` uses unless given one: node statuses flushed every 0.2 s."""


async def start_metadata(nc: Client, services: Spawn, database_url: str, **env: str) -> None:
    """Start the metadata service and wait until its queries answer (503 until the schema is migrated)."""
    await services("metadata", env={"DATABASE_URL": database_url, "SCHEDULER_CONFIG": str(METADATA_TOML), **env})

    async def ready() -> bool:
        return (await request(nc, s.JOB_LIST, {"limit": 1}))[0] == 200

    await eventually(ready, what="metadata queries answer")


async def nodes_listed(nc: Client, *node_ids: str) -> None:
    """Wait until ``node.list`` holds ``node_ids`` (metadata writes statuses every ``node_flush_s``)."""

    async def listed() -> bool:
        code, body = await request(nc, s.NODE_LIST, {"limit": 5000})
        return code == 200 and set(node_ids) <= {n["node_id"] for n in body["nodes"]}

    await eventually(listed, what=f"nodes {', '.join(node_ids)} listed")
