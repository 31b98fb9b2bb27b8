"""The invariant checker finds each kind of violation, and passes a clean history."""

from __future__ import annotations

from schemas import events as ev
from schemas.jobs import Defaults, JobSpec, Resources, decode_job_request, normalise

SPEC: JobSpec = normalise(decode_job_request(b'{"name": "x"}'), Defaults())
CAPS = {"n1": (4.0, 4096, 0)}
R = Resources(cpu=2.0, memory_mb=1024)


def submitted(j: str, key: str | None = None) -> ev.JobSubmitted:
    return ev.JobSubmitted(event_id=f"{j}:s", job_id=j, spec=SPEC, idempotency_key=key)


def decided(j: str, node: str = "n1") -> ev.PlacementDecided:
    return ev.PlacementDecided(
        event_id=f"{j}:d",
        job_id=j,
        cluster="shared",
        technology="docker",
        strategy="best_fit",
        assignments=[ev.Assignment(replica=0, node_id=node)],
        candidates=[],
        resources=R,
    )


def released(j: str) -> ev.PlacementReleased:
    return ev.PlacementReleased(event_id=f"{j}:r", job_id=j)


def cancelled(j: str) -> ev.JobCancelRequested:
    return ev.JobCancelRequested(event_id=f"{j}:c", job_id=j)


def test_clean_history_passes() -> None:
    from tests.support.invariants import check

    events = [
        submitted("a"),
        decided("a"),
        submitted("b"),
        decided("b"),
        cancelled("a"),
        released("a"),
        submitted("c"),
        decided("c"),
    ]
    r = check(events, CAPS)
    assert r.ok, r
    assert (r.jobs, r.decided) == (3, 3)


def test_each_violation_is_found() -> None:
    from tests.support.invariants import check

    r = check([submitted("a"), decided("a"), decided("a")], CAPS)
    assert r.multiply_decided == ["a"]
    r = check([submitted("a")], CAPS, submitted_ids=["a", "zz"])
    assert r.lost == ["a"] and r.missing_from_stream == ["zz"]
    r = check([submitted("a", "k"), submitted("b", "k"), decided("a"), decided("b")], CAPS)
    assert r.duplicate_keys == ["k"]
    r = check([submitted(j) for j in "abc"] + [decided(j) for j in "abc"], CAPS)
    assert r.overbooked == ["n1"]
    r = check([submitted("a"), decided("a"), cancelled("a")], CAPS)
    assert r.unreleased == ["a"]
    r = check([submitted("a"), decided("a"), cancelled("a"), released("a"), released("a")], CAPS)
    assert r.double_released == ["a"]
    launched = ev.ClusterProvisioned(
        event_id="a:p", job_id="a", instances=[ev.Instance(instance_id="i-1", instance_type="t3.medium", replica=0)]
    )
    r = check([submitted("a"), launched, cancelled("a")], CAPS)
    assert r.instances_left == ["a:i-1"]
    assert not r.ok
