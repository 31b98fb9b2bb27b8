"""The committed JSON Schemas (schemas/json/) are current, complete, and describe real messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
import msgspec
import pytest

from schemas import events as ev
from schemas import replies as rp
from schemas import subjects as s
from schemas.jobs import Defaults, JobRequest, Resources, decode_job_request, normalise
from schemas.jsonschema import OUT_DIR, REQUESTS, build, stale
from tests.support.events import assigned, decided

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _schema(rel: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((OUT_DIR / rel).read_text())
    return doc


def _valid(rel: str, body: bytes) -> bool:
    schema = _schema(rel)
    jsonschema.Draft202012Validator.check_schema(schema)
    return bool(jsonschema.Draft202012Validator(schema).is_valid(json.loads(body)))


# --- (1) up to date ---------------------------------------------------------------
def test_committed_schemas_are_up_to_date() -> None:
    bad = stale()
    assert not bad, f"schemas/json/ is stale ({', '.join(bad)}): run `make schemas` and commit the result"


def test_generation_is_deterministic() -> None:
    first = build()
    assert first == build()
    assert all(text.endswith("}\n") for text in first.values())


# --- (2) complete -----------------------------------------------------------------
def test_every_request_subject_has_request_and_reply_schemas() -> None:
    index = _schema("index.json")
    assert set(REQUESTS) == set(s.REQUEST_SUBJECTS)
    assert set(index["requests"]) == set(s.REQUEST_SUBJECTS)
    for subject in s.REQUEST_SUBJECTS:
        entry = index["requests"][subject]
        for key in ("request", "reply", "error"):
            assert (OUT_DIR / entry[key]).is_file(), (subject, key)


def test_every_event_type_has_a_schema() -> None:
    index = _schema("index.json")
    assert set(index["events"]) == set(ev.EVENT_TYPES)
    union = _schema("events.json")
    assert set(union["discriminator"]["mapping"]) == set(ev.EVENT_TYPES)
    assert union["discriminator"]["propertyName"] == "type"
    for event_type in ev.EVENT_TYPES:
        path = OUT_DIR / "events" / f"{event_type}.json"
        assert path.is_file(), event_type
        assert index["events"][event_type]["schema"] == f"events/{event_type}.json"


def test_every_file_is_a_valid_2020_12_schema() -> None:
    for rel in build():
        if rel != "index.json":
            jsonschema.Draft202012Validator.check_schema(_schema(rel))


# --- (3) real messages validate -----------------------------------------------------
def _decided() -> ev.PlacementDecided:
    return decided(
        "j1",
        at=AT,
        assignments=assigned({0: "node-7", 1: "node-3"}),
        candidates=[ev.Candidate(node_id="node-7", cpu_free=7.5, memory_free_mb=30000)],
        resources=Resources(cpu=1.5, memory_mb=2048),
    )


JOB_BODY = (
    b'{"name": "sampler-42", "technology": "docker", "replicas": 2,'
    b' "resources": {"cpu": 1.5, "memory_mb": 2048, "gpu": 0},'
    b' "constraints": {"labels": {"zone": "eu-central-1a"}, "nodes": ["node-7"], "spread": true},'
    b' "cluster": "shared", "workload": {"image": "registry/sampler:1.2", "args": []},'
    b' "max_runtime_s": 3600, "strategy": "best_fit", "request_id": "k-1"}'
)
LEGACY_BODY = b'{"probability_definition": "gs://foo/bar", "initial_number_of_replicas": "2"}'


def test_placement_decided_validates() -> None:
    body = ev.encode(_decided())
    assert _valid("events/placement.decided.json", body)
    assert _valid("events.json", body)
    assert _valid("placement.request.reply.json", body)
    wrong = json.loads(body)
    wrong["assignments"] = "node-7"
    assert not _valid("events/placement.decided.json", json.dumps(wrong).encode())


def test_every_event_type_round_trips_through_its_schema() -> None:
    spec = normalise(msgspec.json.decode(JOB_BODY, type=JobRequest), Defaults())
    samples: list[ev.Event] = [
        ev.JobSubmitted(event_id="e", job_id="j", at=AT, spec=spec, idempotency_key="k"),
        ev.JobAccepted(event_id="e", job_id="j", at=AT, spec=spec, submitted_at=AT),
        ev.JobRejected(event_id="e", job_id="j", at=AT, reason="no", field="resources.cpu"),
        ev.PlacementFailed(event_id="e", job_id="j", at=AT, reason="0/0 nodes", excluded=ev.Excluded(cpu=3)),
        ev.ClusterProvisioned(
            event_id="e", job_id="j", at=AT, instances=[ev.Instance(instance_id="i-1", instance_type="m5", replica=0)]
        ),
        ev.NodeStatus(
            node_id="node-7",
            at=AT,
            state="active",
            technologies=["docker"],
            cpu_cores=8,
            cpu_free=6.5,
            memory_mb=32768,
            memory_free_mb=20000,
            labels={"zone": "eu-central-1a"},
        ),
        ev.DeadLetter(event_id="e", at=AT, service="intake", subject="job.submitted", reason="bad", data="{"),
    ]
    for event in samples:
        tag = event.__struct_config__.tag
        assert isinstance(tag, str)
        body = ev.encode(event)
        assert _valid(f"events/{tag}.json", body), tag
        assert _valid("events.json", body), tag
        other = "events/job.expired.json" if tag != "job.expired" else "events/job.completed.json"
        assert not _valid(other, body), (tag, other)


def test_node_status_from_a_foreign_agent_validates() -> None:
    """Integers where floats are expected (JavaScript sends 8 for 8.0), no event_id."""
    body = (
        b'{"type": "node.status", "node_id": "node-7", "at": "2024-05-01T12:00:00Z", "state": "active",'
        b' "technologies": ["docker", "unikernel"], "cpu_cores": 8, "cpu_free": 6,'
        b' "memory_mb": 32768, "memory_free_mb": 20000, "gpus": 0, "labels": {"zone": "eu-central-1a"}}'
    )
    msgspec.json.decode(body, type=ev.NodeStatus)
    assert _valid("events/node.status.json", body)
    assert not _valid("events/node.status.json", body.replace(b'"cpu_free": 6', b'"cpu_free": "6"'))


@pytest.mark.parametrize("subject", [s.JOB_SUBMIT, s.PLACEMENT_REQUEST])
@pytest.mark.parametrize(
    ("body", "ok"),
    [
        (JOB_BODY, True),
        (b'{"name": "demo"}', True),
        (LEGACY_BODY, True),
        (b'{"probability_definition": "gs://foo/bar", "initial_number_of_replicas": 3}', True),
        (b'{"name": "demo", "replicas": "two"}', False),
        (b'{"name": "demo", "replicas": "2"}', False),
        (b'{"name": "demo", "resources": {"cpu": "1"}}', False),
        (b'{"name": "demo", "colour": "red"}', False),
        (b'{"name": "demo", "probability_definition": "gs://foo/bar"}', False),
        (b'{"replicas": 2}', False),
    ],
)
def test_job_spec_request_agrees_with_the_decoder(subject: str, body: bytes, ok: bool) -> None:
    try:
        decode_job_request(body)
        decoded = True
    except msgspec.DecodeError:
        decoded = False
    assert decoded is ok
    assert _valid(f"{subject}.request.json", body) is ok


def test_replies_and_error_body_validate() -> None:
    enc = msgspec.json.Encoder()
    assert _valid("job.submit.reply.json", enc.encode(rp.SubmitReply(job_id="j1", state="submitted")))
    assert not _valid("job.submit.reply.json", b'{"job_id": "j1", "state": "sleeping"}')
    err = rp.ErrorBody(error=rp.ErrorDetail(code=400, message="Expected `int` >= 1", field="replicas"))
    assert _valid("error.json", enc.encode(err))
    assert _valid("error.json", enc.encode(rp.ErrorBody(error=rp.ErrorDetail(code=504, message="late", job_id="j"))))
    assert not _valid("error.json", b'{"error": {"code": "400", "message": "x"}}')
    assert not _valid("error.json", b'{"code": 400, "message": "x"}')

    decided = _decided()
    record = rp.JobRecord(
        job_id="j1",
        state="placed",
        reason=None,
        spec=normalise(msgspec.json.decode(JOB_BODY, type=JobRequest), Defaults()),
        placement=rp.PlacementRecord(assignments=decided.assignments, candidates=decided.candidates),
        instances=[rp.InstanceRecord(instance_id="i-1", instance_type="m5.large", replica=0, state="running")],
        submitted_at=AT,
        updated_at=AT,
        history=[rp.Transition(state="submitted", at=AT), rp.Transition(state="placed", at=AT)],
    )
    assert _valid("job.get.reply.json", enc.encode(record))
    assert _valid("job.list.reply.json", enc.encode(rp.JobListReply(jobs=[record], next=None)))
    events = rp.JobEventsReply(events=[msgspec.Raw(ev.encode(decided))])
    assert _valid("job.events.reply.json", enc.encode(events))
    assert not _valid("job.events.reply.json", b'{"events": [{"type": "placement.decided"}]}')


@pytest.mark.parametrize(
    ("rel", "body", "ok"),
    [
        ("job.cancel.request.json", b'{"job_id": "j1"}', True),
        ("job.cancel.request.json", b'{"job_id": 1}', False),
        ("job.complete.request.json", b'{"job_id": "j1", "outcome": "succeeded"}', True),
        ("job.complete.request.json", b'{"job_id": "j1", "outcome": "maybe"}', False),
        ("job.list.request.json", b'{"state": "placed", "limit": 10}', True),
        ("job.list.request.json", b'{"limit": 0}', False),
        ("node.list.request.json", b"{}", True),
        ("node.list.request.json", b'{"all": true}', False),
    ],
)
def test_small_requests(rel: str, body: bytes, ok: bool) -> None:
    assert _valid(rel, body) is ok
