"""Teardown remembers a job's tenant (§8.4) so that its ``placement.released`` carries it."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Constraints, JobSpec, Resources, Workload
from schemas.lifecycle import JobLifecycle, decode_record, encode_record
from services.teardown import domain

T0 = datetime(2026, 1, 1, tzinfo=UTC)
J = "job-1"
SHARED = JobSpec(
    name="x",
    technology="docker",
    replicas=1,
    resources=Resources(cpu=1, memory_mb=512),
    constraints=Constraints(),
    cluster="shared",
    workload=Workload(),
    strategy="best_fit",
)


def accepted(tenant: str = s.DEFAULT_TENANT) -> ev.JobAccepted:
    return ev.JobAccepted(event_id="a", job_id=J, spec=SHARED, at=T0, tenant=tenant)


def decided(tenant: str = s.DEFAULT_TENANT) -> ev.PlacementDecided:
    return ev.PlacementDecided(
        event_id="d",
        job_id=J,
        cluster="shared",
        technology="docker",
        strategy="best_fit",
        assignments=[],
        candidates=[],
        at=T0,
        tenant=tenant,
    )


CANCEL = ev.JobCancelRequested(event_id="c", job_id=J)


def test_an_old_record_reads_as_the_default_tenant() -> None:
    old = msgspec.json.encode({"job_id": J, "end": "cancelled"})
    assert decode_record(old).tenant == s.DEFAULT_TENANT
    rec = JobLifecycle(job_id=J, tenant="acme")
    assert decode_record(encode_record(rec)).tenant == "acme"


def test_a_tenant_jobs_acceptance_is_recorded_even_when_shared_without_a_runtime_limit() -> None:
    assert domain.nothing_to_track(accepted()) is True
    assert domain.nothing_to_track(accepted("acme")) is False


def test_the_release_of_a_tenant_job_knows_its_tenant() -> None:
    rec, _ = domain.apply(None, accepted("acme"), T0)
    assert rec.tenant == "acme"
    rec, effect = domain.apply(rec, CANCEL, T0)
    assert isinstance(effect, domain.Release)
    assert rec.tenant == "acme"


@pytest.mark.parametrize(
    "event",
    [
        decided("globex"),
        ev.PlacementFailed(event_id="f", job_id=J, reason="no fit", tenant="globex"),
    ],
)
def test_a_placement_event_names_the_tenant_too(event: domain.TeardownEvent) -> None:
    rec, _ = domain.apply(None, event, T0)
    assert rec.tenant == "globex"


def test_an_event_saying_default_does_not_erase_a_known_tenant() -> None:
    rec, _ = domain.apply(None, accepted("acme"), T0)
    rec, _ = domain.apply(rec, decided(), T0)
    assert rec.tenant == "acme"


def test_a_job_of_the_schedulers_own_account_stays_default() -> None:
    rec, effect = domain.apply(None, CANCEL, T0)
    assert rec.tenant == s.DEFAULT_TENANT and isinstance(effect, domain.Release)
