"""JobSpec decoding and validation: a table of good and bad bodies, and the legacy body."""

from __future__ import annotations

import json
import uuid

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import events as ev
from schemas.jobs import Defaults, JobRequest, LegacyJobRequest, decode_job_request, normalise
from services.gateway.handlers import _JOB_NS, job_id_for
from services.runtime.micro import from_decode_error

D = Defaults()


def body(**kw: object) -> bytes:
    return json.dumps({"name": "demo", **kw}).encode()


GOOD = [
    body(),
    body(replicas=1000, resources={"cpu": 0.25, "memory_mb": 1}),
    body(resources={"cpu": 6}),  # JavaScript sends 6 for 6.0
    body(strategy="pack", cluster="dedicated", max_runtime_s=60),
    body(constraints={"labels": {"zone": "eu-central-1a"}, "nodes": ["node-7"], "spread": True}),
    body(workload={"image": "registry/sampler:1.2", "probability_definition": "gs://foo/bar", "args": ["-v"]}),
    body(request_id="client-key-1", priority=5),
]

BAD = [
    (b"", None, "malformed"),
    (b"not json", None, "malformed"),
    (b"[1, 2]", None, "Expected `object`"),
    (b"{}", None, "missing required field `name`"),
    (body(replicas=0), "replicas", ">= 1"),
    (body(replicas=1001), "replicas", "<= 1000"),
    (body(replicas="2"), "replicas", "Expected `int"),
    (body(resources={"cpu": 0}), "resources.cpu", "> 0"),
    (body(resources={"cpu": -1}), "resources.cpu", "> 0"),
    (body(resources={"cpu": 1e300}), "resources.cpu", "<= 4096"),
    (body(resources={"memory_mb": -5}), "resources.memory_mb", ">= 1"),
    (body(resources={"memory_mb": 1.5}), "resources.memory_mb", "Expected `int"),
    (body(resources={"gpu": -1}), "resources.gpu", ">= 0"),
    (body(strategy="random"), "strategy", "Invalid enum value"),
    (body(cluster="big"), "cluster", "Invalid enum value"),
    (body(name=""), "name", "length >= 1"),
    (body(name="x" * 129), "name", "length <= 128"),
    (body(name="bad name!"), "name", "matching regex"),
    (body(colour="red"), "colour", "unknown field `colour`"),
    (body(resources={"cpus": 2}), "resources.cpus", "unknown field `cpus`"),
    (body(constraints={"nodes": ["a.b"]}), "constraints.nodes.0", "matching regex"),
    (body(max_runtime_s=0), "max_runtime_s", ">= 1"),
    (body(technology="Docker!"), "technology", "matching regex"),
    (b'{"name": "x", "replicas": 1e400}', "replicas", None),
    (b'{"name": "x", "resources": {"cpu": NaN}}', None, "malformed"),
    (b'{"name": ' + b"[" * 5000 + b"]" * 5000 + b"}", "name", None),
]


@pytest.mark.parametrize("raw", GOOD)
def test_good_bodies_decode(raw: bytes) -> None:
    req = decode_job_request(raw)
    assert isinstance(req, JobRequest)
    spec = normalise(req, D)
    assert spec.replicas >= 1 and spec.resources.cpu > 0


@pytest.mark.parametrize(("raw", "field", "text"), BAD)
def test_bad_bodies_name_the_problem(raw: bytes, field: str | None, text: str | None) -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        decode_job_request(raw)
    err = from_decode_error(info.value)
    assert err.code == 400
    assert err.field == field
    if text:
        assert text in err.message


def test_defaults_fill_what_is_left_out() -> None:
    spec = normalise(decode_job_request(b'{"name": "demo"}'), D)
    assert (spec.technology, spec.replicas, spec.resources.cpu, spec.resources.memory_mb) == ("docker", 1, 1.0, 1024)
    assert (spec.cluster, spec.strategy) == ("shared", "best_fit")


def test_legacy_body_is_a_dedicated_job_with_default_resources() -> None:
    req = decode_job_request(b'{"probability_definition": "gs://foo/bar", "initial_number_of_replicas": "2"}')
    assert isinstance(req, LegacyJobRequest)
    spec = normalise(req, D)
    assert spec.cluster == "dedicated"
    assert spec.replicas == 2
    assert spec.resources.cpu == D.cpu and spec.resources.memory_mb == D.memory_mb
    assert spec.workload.probability_definition == "gs://foo/bar"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"probability_definition": "gs://foo/bar", "initial_number_of_replicas": "zero"}',
        b'{"probability_definition": "gs://foo/bar", "initial_number_of_replicas": "0"}',
        b'{"probability_definition": "", "initial_number_of_replicas": "2"}',
    ],
)
def test_bad_legacy_bodies_are_rejected(raw: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_job_request(raw)


def test_events_are_tagged_with_their_subject_and_round_trip() -> None:
    spec = normalise(decode_job_request(body()), D)
    e = ev.JobSubmitted(event_id="j1:job.submitted", job_id="j1", spec=spec)
    raw = ev.encode(e)
    assert json.loads(raw)["type"] == "job.submitted" == ev.subject_of(e)
    assert ev.any_event_decoder.decode(raw) == e
    n = ev.NodeStatus(node_id="n-1", state="active", cpu_cores=8, cpu_free=6.5, memory_mb=1, memory_free_mb=1)
    assert ev.subject_of(n) == "node.status.n-1"
    assert json.loads(ev.encode(n))["type"] == "node.status"


def test_event_decoding_skips_unknown_fields() -> None:
    raw = b'{"type": "placement.released", "event_id": "e", "job_id": "j", "at": "2026-01-01T00:00:00Z", "new": 1}'
    assert isinstance(ev.any_event_decoder.decode(raw), ev.PlacementReleased)


@given(st.text(min_size=1, max_size=300))
def test_job_id_is_uuid5_of_the_idempotency_key(key: str) -> None:
    """The hand-rolled hash must stay exactly uuid5: job ids of stored jobs depend on it."""
    assert job_id_for(key) == uuid.uuid5(_JOB_NS, key).hex
