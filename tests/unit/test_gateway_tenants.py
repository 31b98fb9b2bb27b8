"""The gateway and tenants (§8.4): whose job a submit makes, per-tenant idempotency keys, and the
404 a tenant gets for another tenant's job (the same as for an unknown job)."""

from __future__ import annotations

import json
import uuid

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import events as ev
from schemas import subjects as s
from services.gateway.admission import Admission
from services.gateway.handlers import _JOB_NS, Decisions, Gateway, job_id_for
from services.gateway.lifecycle import JobStates, Lifecycle, visible
from services.gateway.scale import Scaler
from services.intake.__main__ import verdict_event
from services.runtime.config import AdmissionConf, load_config
from services.runtime.micro import RequestError

CONFIG = load_config()


def request(subject: str, body: object, *, account: str | None = None, forged: str | None = None) -> Msg:
    """A request as a handler receives it: through ``account``'s import (on ``sched.tenant.*``, with the
    server's header), or on the plain subject, maybe with a ``forged`` header of the client's own."""
    headers: dict[str, str] = {}
    if account is not None:
        subject = s.tenant_request_subject(subject)
        headers[s.REQUEST_INFO_HEADER] = json.dumps({"acc": account, "rtt": 1})
    elif forged is not None:
        headers[s.REQUEST_INFO_HEADER] = json.dumps({"acc": forged})
    return Msg(None, subject=subject, data=json.dumps(body).encode(), headers=headers or None)  # type: ignore[arg-type]


class TestJobIds:
    def test_the_default_tenants_ids_are_those_before_tenants(self) -> None:
        assert job_id_for("order-42") == uuid.uuid5(_JOB_NS, "order-42").hex
        assert job_id_for("order-42", s.DEFAULT_TENANT) == job_id_for("order-42")

    def test_a_tenants_ids_are_uuid5_in_its_own_namespace(self) -> None:
        ns = uuid.uuid5(_JOB_NS, "tenant:acme")
        assert job_id_for("order-42", "acme") == uuid.uuid5(ns, "order-42").hex

    def test_the_same_key_names_one_job_per_tenant(self) -> None:
        ids = {t: job_id_for("order-42", t) for t in ("default", "acme", "globex")}
        assert len(set(ids.values())) == 3
        assert all(job_id_for("order-42", t) == job_id for t, job_id in ids.items())  # deterministic

    def test_no_key_is_a_new_job_each_time(self) -> None:
        assert job_id_for(None, "acme") != job_id_for(None, "acme")


def gateway() -> Gateway:
    return Gateway(
        publisher=None,  # type: ignore[arg-type]
        config=CONFIG,
        decisions=Decisions(),
        admission=Admission(None, AdmissionConf(max_backlog=0)),  # type: ignore[arg-type]
    )


class TestSubmit:
    async def test_a_tenants_submit_records_its_tenant_and_its_own_job_id(self) -> None:
        event = await gateway()._submit(request(s.JOB_SUBMIT, {"name": "a", "request_id": "k1"}, account="ACME"))
        assert event.tenant == "acme"
        assert event.job_id == job_id_for("k1", "acme") != job_id_for("k1")
        assert event.event_id == ev.event_id_for(event.job_id, s.JOB_SUBMITTED)

    async def test_the_plain_subject_is_the_default_tenant_whatever_the_header_claims(self) -> None:
        event = await gateway()._submit(request(s.JOB_SUBMIT, {"name": "a", "request_id": "k1"}, forged="ACME"))
        assert event.tenant == s.DEFAULT_TENANT
        assert event.job_id == job_id_for("k1")

    async def test_intake_copies_the_tenant_to_the_acceptance(self) -> None:
        event = await gateway()._submit(request(s.JOB_SUBMIT, {"name": "a"}, account="GLOBEX"))
        accepted = verdict_event(event, CONFIG)
        assert isinstance(accepted, ev.JobAccepted) and accepted.tenant == "globex"


@pytest.mark.parametrize(
    ("owner", "caller", "seen"),
    [
        ("acme", "acme", True),
        ("acme", "globex", False),
        ("default", "acme", False),
        ("acme", "default", True),  # operators, in the scheduler's account
        ("default", "default", True),
    ],
)
def test_visible(owner: str, caller: str, seen: bool) -> None:
    assert visible(owner, caller) is seen


def submitted(job_id: str, tenant: str) -> bytes:
    spec = {"name": "j", "technology": "docker"}
    body = {"type": s.JOB_SUBMITTED, "event_id": f"{job_id}:s", "job_id": job_id, "spec": spec, "tenant": tenant}
    return json.dumps(body).encode()


class _CurrentStates(JobStates):
    """The view, always current (no JetStream to ask)."""

    async def sync(self, js: JetStreamContext, timeout: float) -> None:
        return None


@pytest.fixture
def lifecycle() -> Lifecycle:
    states = _CurrentStates()
    states.apply(submitted("j-acme", "acme"))
    states.apply(submitted("j-op", s.DEFAULT_TENANT))
    states.apply(b'{"type": "job.submitted", "event_id": "j-old:s", "job_id": "j-old"}')  # before tenants
    return Lifecycle(None, None, states, 1.0)  # type: ignore[arg-type]


class TestIsolation:
    def test_the_view_keeps_only_other_tenants(self, lifecycle: Lifecycle) -> None:
        assert lifecycle.states.tenants == {"j-acme": "acme"}
        assert lifecycle.states.tenant("j-old") == s.DEFAULT_TENANT

    async def test_each_sees_what_it_may(self, lifecycle: Lifecycle) -> None:
        assert await lifecycle.state("j-acme", "acme") == "submitted"
        assert await lifecycle.state("j-acme") == "submitted"  # operators
        assert await lifecycle.state("j-op") == "submitted"

    @pytest.mark.parametrize(
        ("subject", "body"),
        [
            (s.JOB_CANCEL, {"job_id": "{job}"}),
            (s.JOB_COMPLETE, {"job_id": "{job}", "outcome": "failed"}),
            (s.JOB_SCALE, {"job_id": "{job}", "replicas": 2}),
        ],
    )
    @pytest.mark.parametrize(("job", "account"), [("j-acme", "GLOBEX"), ("j-op", "ACME"), ("j-old", "ACME")])
    async def test_anothers_job_is_a_404_worded_as_an_unknown_one(
        self, lifecycle: Lifecycle, subject: str, body: dict[str, object], job: str, account: str
    ) -> None:
        scaler = Scaler(lifecycle, max_replicas=10)
        handler = {s.JOB_CANCEL: lifecycle.cancel, s.JOB_COMPLETE: lifecycle.complete, s.JOB_SCALE: scaler.scale}

        async def refusal(job_id: str) -> RequestError:
            filled = {k: (job_id if v == "{job}" else v) for k, v in body.items()}
            with pytest.raises(RequestError) as e:
                await handler[subject](request(subject, filled, account=account))
            return e.value

        theirs, unknown = await refusal(job), await refusal("no-such-job")
        assert theirs.code == unknown.code == 404 and theirs.field == unknown.field
        assert str(theirs).replace(job, "X") == str(unknown).replace("no-such-job", "X")
