"""Hostile input: hypothesis throws random bytes, deep nesting, huge numbers, NaN, unicode and
oversize strings at the request endpoints (``job.scale`` and ``placement.plan`` included) and at
``node.status`` and ``node.draining``; every request gets a well-formed reply per the error contract,
and no service dies or blows up in memory."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from schemas import subjects as s
from services.devstack import NatsServer, ServiceProcess, spawn_service
from services.runtime.credentials import client_environ
from tests.support.procs import present, proc_usage
from tests.support.servers import REPO, nats_auth, wait_for_services

pytestmark = pytest.mark.integration
T = TypeVar("T")
SERVICES = [n for n in ("gateway", "intake", "placement", "metadata") if present(n)]


class Live:
    """A running system plus an event loop in a thread, so sync hypothesis tests can drive it."""

    def __init__(self, server: NatsServer, procs: list[ServiceProcess]) -> None:
        self.server = server
        self.procs = procs
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.nc: Client = self.run(nats.connect(server.url, **nats_auth("admin")))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, postgres_server: str) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("hostile")
    server = NatsServer(config=REPO / "nats.conf", store_dir=tmp / "js", log_dir=tmp)
    server.start()
    env = {"NATS_URL": server.url, "LOG_LEVEL": "warning", "DATABASE_URL": postgres_server, **client_environ()}
    procs = [spawn_service(n, env, log_path=tmp / f"{n}.log") for n in SERVICES]
    system = Live(server, procs)
    try:
        system.run(wait_for_services(system.nc, SERVICES))
        yield system
        dead = {p.name: p.log_text()[-2000:] for p in procs if p.returncode is not None}
        assert not dead, f"services died: {dead}"
        for p in procs:
            _, rss = proc_usage(p.pid)
            assert rss < 1024 * 2**20, f"{p.name} grew to {rss / 2**20:.0f} MiB"
    finally:
        system.close()
        for p in procs:
            p.stop()
        server.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5),
    max_leaves=30,
)
anything = st.one_of(
    st.binary(max_size=4096),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.sampled_from([b"1e999", b"-1e999", b"NaN", b'{"name": "x", "replicas": 1e400}', b"\xff\xfe", b"null"]),
)
spec_like = st.fixed_dictionaries(
    {"name": st.text(max_size=300)},
    optional={
        "replicas": json_values,
        "resources": st.dictionaries(st.sampled_from(["cpu", "memory_mb", "gpu", "x"]), json_values, max_size=4),
        "technology": st.text(max_size=70),
        "constraints": json_values,
        "strategy": st.text(max_size=20),
        "cluster": st.sampled_from(["shared", "dedicated", "", "DEDICATED"]),
        "request_id": st.text(max_size=200),
        "max_runtime_s": json_values,
    },
).map(lambda d: json.dumps(d).encode())
oversize = st.integers(256 * 1024 - 64, 900 * 1024).map(lambda n: b'{"name": "' + b"x" * n + b'"}')


def assert_well_formed(reply: Any, ok_codes: tuple[int, ...]) -> dict[str, Any]:
    headers = reply.headers or {}
    body = json.loads(reply.data)
    if s.ERROR_CODE_HEADER in headers:
        code = int(headers[s.ERROR_CODE_HEADER])
        assert code in ok_codes, (code, headers, body)
        assert headers[s.ERROR_HEADER]
        assert body["error"]["code"] == code and isinstance(body["error"]["message"], str)
    return body


def answer(
    live: Live, subject: str, payload: bytes, ok_codes: tuple[int, ...], timeout: float = 10
) -> dict[str, Any] | None:
    """Ask ``subject``: the reply is well formed, an error one of ``ok_codes``; its body on success, else None."""
    reply = live.run(live.nc.request(subject, payload, timeout=timeout))
    body = assert_well_formed(reply, ok_codes)
    return None if reply.headers and s.ERROR_CODE_HEADER in reply.headers else body


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@SETTINGS
@given(payload=st.one_of(anything, spec_like, oversize))
def test_job_submit_always_answers_per_contract(live: Live, payload: bytes) -> None:
    body = answer(live, s.JOB_SUBMIT, payload, (400, 413))
    if body is not None:
        assert body["state"] == "submitted" and body["job_id"]


@SETTINGS
@given(payload=st.one_of(anything, spec_like))
def test_placement_request_always_answers_per_contract(live: Live, payload: bytes) -> None:
    body = answer(live, s.PLACEMENT_REQUEST, payload, (400, 413, 504), timeout=15)
    if body is not None:
        assert body["type"] in (s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.JOB_REJECTED)


@SETTINGS
@given(payload=st.one_of(anything, json_values.map(lambda v: json.dumps({"job_id": v}).encode())))
def test_queries_always_answer_per_contract(live: Live, payload: bytes) -> None:
    if "metadata" not in SERVICES:
        pytest.fail("the metadata service is part of the system")
    for subject in (s.JOB_GET, s.JOB_LIST, s.JOB_EVENTS, s.NODE_LIST):
        answer(live, subject, payload, (400, 404, 413))


@SETTINGS
@given(payload=st.one_of(anything, json_values.map(lambda v: json.dumps(v).encode())), node=st.integers(0, 5))
def test_node_status_garbage_never_hurts_placement(live: Live, payload: bytes, node: int) -> None:
    live.run(live.nc.jetstream().publish(s.node_status_subject(f"fuzz-{node}"), payload))


drain_like = st.fixed_dictionaries(
    {"node_id": st.one_of(st.text(max_size=200), st.sampled_from(["fuzz-1", "solid", "a b", "x.y", "*", ">"]))},
    optional={"reason": st.one_of(json_values, st.text(min_size=4000, max_size=5000)), "draining": json_values},
).map(lambda d: json.dumps(d).encode())


@SETTINGS
@given(payload=st.one_of(anything, drain_like, oversize), undrain=st.booleans())
def test_node_drain_and_undrain_always_answer_per_contract(live: Live, payload: bytes, undrain: bool) -> None:
    subject = s.NODE_UNDRAIN if undrain else s.NODE_DRAIN
    body = answer(live, subject, payload, (400, 404, 413))
    if body is not None:
        assert isinstance(body["node_id"], str) and body["draining"] is (not undrain)


@SETTINGS
@given(payload=st.one_of(anything, json_values.map(lambda v: json.dumps(v).encode())), node=st.integers(0, 5))
def test_node_draining_garbage_never_hurts_placement_or_metadata(live: Live, payload: bytes, node: int) -> None:
    live.run(live.nc.jetstream().publish(s.node_draining_subject(f"fuzz-{node}"), payload))


@pytest.fixture(scope="module")
def a_job(live: Live) -> str:
    """A job for the scale requests to hit, pinned to a node that never reports (pending, then failed)."""
    reply = live.run(
        live.nc.request(
            s.JOB_SUBMIT, b'{"name": "scale-target", "replicas": 2, "constraints": {"nodes": ["nowhere"]}}', timeout=10
        )
    )
    return str(json.loads(reply.data)["job_id"])


JOB = "@job"
"""Stands for :func:`a_job`'s id in the generated bodies (known only once the system runs)."""
scale_like = st.fixed_dictionaries(
    {"job_id": st.one_of(st.just(JOB), st.text(max_size=200), json_values)},
    optional={
        "replicas": st.one_of(json_values, st.integers(-5, 1200), st.sampled_from([0, 1, 1000, 1001, 2**63, 1.5])),
        "request_id": st.one_of(st.text(max_size=200), json_values),
        "extra": json_values,
    },
)


@SETTINGS
@given(payload=st.one_of(anything, scale_like, oversize))
def test_job_scale_always_answers_per_contract(live: Live, a_job: str, payload: bytes | dict[str, Any]) -> None:
    if isinstance(payload, dict):
        payload = json.dumps({k: a_job if v == JOB else v for k, v in payload.items()}).encode()
    body = answer(live, s.JOB_SCALE, payload, (400, 404, 409, 413))
    if body is not None:
        assert body["job_id"] == a_job and body["state"] == "scale_requested"
        assert isinstance(body["replicas"], int) and 1 <= body["replicas"] <= 1000


@SETTINGS
@given(payload=st.one_of(anything, spec_like, oversize))
def test_placement_plan_always_answers_per_contract(live: Live, payload: bytes) -> None:
    body = answer(live, s.PLACEMENT_PLAN, payload, (400, 413))
    if body is not None:
        assert ("decision" in body) != ("failure" in body), body


quota_like = st.fixed_dictionaries(
    {"tenant": st.one_of(st.text(max_size=80), st.sampled_from(["fuzz", "Acme", "a.b", "*", "default"]))},
    optional={
        "quota": st.one_of(
            json_values,
            st.dictionaries(
                st.sampled_from(["cpu", "memory_mb", "gpu", "jobs", "instances", "cpu_hours", "x"]),
                json_values,
                max_size=4,
            ),
        ),
        "extra": json_values,
    },
).map(lambda d: json.dumps(d).encode())


@SETTINGS
@given(payload=st.one_of(anything, quota_like, oversize))
def test_quota_and_usage_requests_always_answer_per_contract(live: Live, payload: bytes) -> None:
    body = answer(live, s.QUOTA_SET, payload, (400, 413))
    if body is not None:
        assert body["source"] == "runtime" and isinstance(body["quota"], dict)
    for subject in (s.QUOTA_GET, s.TENANT_USAGE):
        body = answer(live, subject, payload, (400, 404, 413))
        if body is not None:
            assert isinstance(body["tenant"], str) and isinstance(body["quota"], dict)


def test_after_the_fuzzing_the_system_still_places_jobs(live: Live) -> None:
    async def go() -> dict[str, Any]:
        nc = live.nc
        await nc.jetstream().publish(
            s.node_status_subject("solid"),
            json.dumps(
                {
                    "type": "node.status",
                    "node_id": "solid",
                    "at": _now(),
                    "state": "active",
                    "technologies": ["docker"],
                    "cpu_cores": 64,
                    "cpu_free": 64,
                    "memory_mb": 262144,
                    "memory_free_mb": 262144,
                }
            ).encode(),
        )
        spec = b'{"name": "after-fuzz", "constraints": {"nodes": ["solid"]}}'
        plan = await nc.request(s.PLACEMENT_PLAN, spec, timeout=10)
        assert json.loads(plan.data)["decision"]["assignments"] == [{"replica": 0, "node_id": "solid"}], plan.data
        reply = await nc.request(s.PLACEMENT_REQUEST, spec, timeout=10)
        return dict(json.loads(reply.data))

    decided = live.run(go())
    assert decided["type"] == s.PLACEMENT_DECIDED, decided
    assert decided["assignments"][0]["node_id"] == "solid"


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()
