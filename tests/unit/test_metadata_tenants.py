"""Metadata and tenants (§8.4): a job's tenant projected from its events, who sees which job, whose
jobs ``job.list`` lists; the query handlers over a fake store."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import permutations

import msgspec
import pytest
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from services.metadata import domain, migrations, sql_jobs
from services.metadata.adapters import EventPageRow, EventPosition
from services.metadata.queries import Queries
from services.metadata.views import job_write
from services.runtime.micro import RequestError
from tests.support.events import SPEC

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def submitted(job: str, tenant: str = s.DEFAULT_TENANT) -> ev.JobSubmitted:
    return ev.JobSubmitted(event_id=f"{job}:job.submitted", job_id=job, at=T0, spec=SPEC, tenant=tenant)


def accepted(job: str, tenant: str = s.DEFAULT_TENANT) -> ev.JobAccepted:
    return ev.JobAccepted(event_id=f"{job}:job.accepted", job_id=job, at=T0, spec=SPEC, tenant=tenant)


def failed(job: str, tenant: str = s.DEFAULT_TENANT) -> ev.PlacementFailed:
    return ev.PlacementFailed(event_id=f"{job}:placement.failed", job_id=job, at=T0, reason="no room", tenant=tenant)


class TestProjection:
    @pytest.mark.parametrize(
        ("known", "said", "tenant"),
        [
            ("default", "default", "default"),
            ("default", "acme", "acme"),
            ("acme", "default", "acme"),  # an event without the field says nothing
            ("acme", "acme", "acme"),
            ("globex", "acme", "acme"),  # never happens; the smaller, whatever the order
            ("acme", "globex", "acme"),
        ],
    )
    def test_tenant_of_job(self, known: str, said: str, tenant: str) -> None:
        assert domain.tenant_of_job(known, said) == tenant

    def test_the_view_and_record_carry_the_tenant_in_any_order(self) -> None:
        events: list[ev.JobEvent] = [submitted("j", "acme"), accepted("j"), failed("j", "acme")]
        for order in permutations(events):
            view = domain.merge(None, list(order))
            assert view.tenant == "acme"
            record = domain.to_record(view)
            assert record is not None and record.tenant == "acme"
        assert job_write(view, None).tenant == "acme"

    def test_a_placement_event_names_the_tenant_before_the_submit_is_projected(self) -> None:
        assert domain.merge(None, [failed("j", "globex")]).tenant == "globex"

    def test_the_default_tenant_is_not_written_into_the_view(self) -> None:
        view = domain.merge(None, [submitted("j")])
        assert view.tenant == s.DEFAULT_TENANT
        assert b"tenant" not in msgspec.json.encode(view)  # views as before tenants

    @pytest.mark.parametrize(
        ("owner", "caller", "seen"),
        [("acme", "acme", True), ("acme", "globex", False), ("default", "acme", False), ("acme", "default", True)],
    )
    def test_visible(self, owner: str, caller: str, seen: bool) -> None:
        assert domain.visible(owner, caller) is seen

    @pytest.mark.parametrize(
        ("caller", "asked", "listed"),
        [
            ("default", None, None),  # operators: every tenant's
            ("default", "acme", "acme"),
            ("default", "default", "default"),
            ("acme", None, "acme"),
            ("acme", "globex", "acme"),  # a tenant lists its own, whatever it asks
        ],
    )
    def test_listed_tenant(self, caller: str, asked: str | None, listed: str | None) -> None:
        assert domain.listed_tenant(caller, asked) == listed


class TestSchema:
    def test_the_tenant_migration_adds_the_column_and_its_index(self) -> None:
        found = {m.name: m.sql for m in migrations.load()}
        sql = found["job_tenants"]
        assert "ADD COLUMN tenant text NOT NULL DEFAULT 'default'" in sql
        assert re.search(r"CREATE INDEX jobs_by_tenant ON jobs \(tenant, seq\)", sql)

    def test_the_job_rows_write_the_tenant(self) -> None:
        for sql in (sql_jobs.INSERT_JOBS, sql_jobs.UPDATE_JOBS):
            assert "u.tenant" in sql
        row = json.loads(sql_jobs.json_rows([job_write(domain.merge(None, [submitted("j", "acme")]), None)]))
        assert row[0]["tenant"] == "acme"


class FakeDb:
    """The store's queries over events kept in memory (job id -> tenant, bodies in order)."""

    def __init__(self, jobs: dict[str, list[ev.JobEvent]]) -> None:
        self.jobs = jobs
        self.listed: list[str | None] = []

    def _tenant(self, job_id: str) -> str:
        return domain.merge(None, self.jobs[job_id]).tenant

    async def job_events(self, job_id: str) -> list[str]:
        return [ev.encode(e).decode() for e in self.jobs.get(job_id, [])]

    async def events_of(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        return [(j, ev.encode(e).decode()) for j in job_ids for e in self.jobs.get(j, [])]

    async def list_jobs(
        self, state: str | None, before_seq: int | None, limit: int, tenant: str | None = None
    ) -> list[tuple[int, str]]:
        self.listed.append(tenant)
        rows = [(n, j) for n, j in enumerate(self.jobs, 1) if tenant is None or self._tenant(j) == tenant]
        return rows[::-1][:limit]

    async def job_tenant(self, job_id: str) -> str | None:
        return self._tenant(job_id) if job_id in self.jobs else None

    async def job_events_page(self, job_id: str, after: EventPosition | None, limit: int) -> list[EventPageRow]:
        return [
            EventPageRow(position=(e.at, n, e.event_id), body=ev.encode(e).decode())
            for n, e in enumerate(self.jobs.get(job_id, []))
        ][:limit]


def query(subject: str, body: object, account: str | None = None) -> Msg:
    headers = None
    if account is not None:
        subject = s.tenant_request_subject(subject)
        headers = {s.REQUEST_INFO_HEADER: json.dumps({"acc": account})}
    return Msg(None, subject=subject, data=json.dumps(body).encode(), headers=headers)  # type: ignore[arg-type]


@pytest.fixture
def db() -> FakeDb:
    return FakeDb({"a1": [submitted("a1", "acme")], "g1": [submitted("g1", "globex")], "o1": [submitted("o1")]})


@pytest.fixture
def queries(db: FakeDb) -> Queries:
    return Queries(db, node_ttl_s=15)  # type: ignore[arg-type]


class TestQueries:
    async def refusal(self, queries: Queries, subject: str, job_id: str, account: str | None) -> RequestError:
        handler = queries.job_get if subject == s.JOB_GET else queries.job_events
        with pytest.raises(RequestError) as e:
            await handler(query(subject, {"job_id": job_id}, account))
        return e.value

    @pytest.mark.parametrize("subject", [s.JOB_GET, s.JOB_EVENTS])
    @pytest.mark.parametrize(("job", "account"), [("g1", "ACME"), ("a1", "GLOBEX"), ("o1", "ACME")])
    async def test_anothers_job_is_404_as_an_unknown_one(
        self, queries: Queries, subject: str, job: str, account: str
    ) -> None:
        theirs = await self.refusal(queries, subject, job, account)
        unknown = await self.refusal(queries, subject, "zz", account)
        assert (theirs.code, theirs.field) == (unknown.code, unknown.field) == (404, "job_id")
        assert theirs.message.replace(job, "X") == unknown.message.replace("zz", "X")

    @pytest.mark.parametrize("account", [None, "ACME"])
    async def test_ones_own_job_and_the_operators_view(self, queries: Queries, account: str | None) -> None:
        record = json.loads(await queries.job_get(query(s.JOB_GET, {"job_id": "a1"}, account)))
        assert record["tenant"] == "acme"
        page = json.loads(await queries.job_events(query(s.JOB_EVENTS, {"job_id": "a1"}, account)))
        assert [e["type"] for e in page["events"]] == [s.JOB_SUBMITTED]

    @pytest.mark.parametrize(
        ("account", "body", "jobs"),
        [
            ("ACME", {}, ["a1"]),
            ("ACME", {"tenant": "globex"}, ["a1"]),
            ("GLOBEX", {"tenant": "default"}, ["g1"]),
            (None, {}, ["o1", "g1", "a1"]),
            (None, {"tenant": "globex"}, ["g1"]),
            (None, {"tenant": "default"}, ["o1"]),
        ],
    )
    async def test_job_list(self, queries: Queries, account: str | None, body: object, jobs: list[str]) -> None:
        page = json.loads(await queries.job_list(query(s.JOB_LIST, body, account)))
        assert [j["job_id"] for j in page["jobs"]] == jobs

    async def test_a_bad_tenant_filter_is_refused_by_the_schema(self, queries: Queries) -> None:
        """(a ValidationError, which the micro service answers with a 400 naming the field)"""
        with pytest.raises(msgspec.ValidationError, match="tenant"):
            await queries.job_list(query(s.JOB_LIST, {"tenant": "Not A Tenant"}))
