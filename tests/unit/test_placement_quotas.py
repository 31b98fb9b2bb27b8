"""Tenant quotas (§8.4), pure: usage from placement events, the compute budget, the checks, and
the decider waiting, capping and never letting a chain slip past a limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Resources
from schemas.replies import Quota
from services.placement import quotas as q
from services.placement.decider import Decider, Pending
from services.placement.ledger import Ledger
from services.placement.moves import events_of, replan
from services.placement.state import World
from services.placement.tenants import whose
from services.runtime.micro import RequestError
from tests.support.events import SMALL_SPEC, SPEC, decided, free_node
from tests.support.placement import NOW, TTL, decision, fleet
from tests.unit.test_placement_decider import CAPACITY, FakeClock, FakePlacements, Rig
from tests.unit.test_placement_decider import job as pending_job

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RES = Resources(cpu=2, memory_mb=100, gpu=1)


def shared(
    job_id: str, placed: int, *, tenant: str = "acme", revision: int = 1, at: datetime = T0
) -> ev.PlacementDecided:
    return msgspec.structs.replace(
        decided(job_id),
        event_id=ev.revision_event_id(job_id, s.PLACEMENT_DECIDED, revision),
        assignments=[ev.Assignment(replica=r, node_id=f"n{r}") for r in range(placed)],
        resources=RES,
        revision=revision,
        replicas=max(placed, 1),
        tenant=tenant,
        at=at,
    )


class TestShares:
    def test_a_shared_job_counts_its_placed_replicas(self) -> None:
        e = msgspec.structs.replace(shared("j", 3), assignments=[*shared("j", 2).assignments, ev.Assignment(replica=2)])
        assert q.share_of(e) == q.Share(cpu_m=4000, memory_mb=200, gpu=2, jobs=1, instances=0)

    def test_a_dedicated_job_counts_its_instances(self) -> None:
        e = msgspec.structs.replace(
            shared("j", 0),
            cluster="dedicated",
            assignments=[ev.Assignment(replica=r, instance_type="m5.large") for r in range(2)],
        )
        assert q.share_of(e) == q.Share(cpu_m=4000, memory_mb=200, gpu=2, jobs=1, instances=2)

    def test_a_spec_counts_every_replica(self) -> None:
        assert q.share_of_spec(SPEC) == q.Share(cpu_m=3000, memory_mb=1024, gpu=0, jobs=1)


class TestTheExplanation:
    def test_the_contracts_format(self) -> None:
        used = q.Share(cpu_m=8000, jobs=3)
        why = q.over_quota("acme", Quota(cpu=8), used, q.Share(cpu_m=1000, jobs=1))
        assert why == "quota: tenant acme uses 8 of 8 cpu"

    def test_the_first_field_over_in_order(self) -> None:
        why = q.over_quota("acme", Quota(cpu=100, jobs=2), q.Share(cpu_m=1500, jobs=2), q.Share(cpu_m=500, jobs=1))
        assert why == "quota: tenant acme uses 2 of 2 jobs"

    def test_fractions_and_fields_the_job_does_not_raise(self) -> None:
        assert q.over_quota("a", Quota(cpu=2), q.Share(cpu_m=1500), q.Share(cpu_m=1000)) == (
            "quota: tenant a uses 1.5 of 2 cpu"
        )
        assert q.over_quota("a", Quota(instances=0), q.Share(), q.Share(cpu_m=1000, jobs=1)) is None
        assert q.over_quota("a", Quota(), q.Share(cpu_m=10**9), q.Share(cpu_m=1000)) is None

    def test_exactly_at_the_limit_is_within(self) -> None:
        assert q.over_quota("a", Quota(cpu=8, jobs=4), q.Share(cpu_m=6000, jobs=3), q.Share(cpu_m=2000, jobs=1)) is None


class TestTheBudget:
    def spec(self, max_runtime_s: int | None) -> object:
        return msgspec.structs.replace(SPEC, max_runtime_s=max_runtime_s)

    def test_a_limited_job_must_fit_in_what_is_left(self) -> None:
        spec = msgspec.structs.replace(SPEC, max_runtime_s=7200)  # 1.5 cpu x 2 x 2 h = 6 core-hours
        assert q.budget_reason("acme", Quota(cpu_hours=10), 4.0, spec) is None
        why = q.budget_reason("acme", Quota(cpu_hours=10), 4.5, spec)
        assert why == (
            "quota: tenant acme used 4.5 of 10 cpu_hours in the last 30 days; "
            "this job may use 6 more (1.5 cpu x 2 replicas x 7200 s)"
        )

    def test_an_unlimited_job_is_refused_only_once_the_budget_is_used_up(self) -> None:
        assert q.budget_reason("acme", Quota(cpu_hours=10), 9.99, SPEC) is None
        assert q.budget_reason("acme", Quota(cpu_hours=10), 10, SPEC) == (
            "quota: tenant acme used 10 of 10 cpu_hours in the last 30 days"
        )

    def test_no_budget_no_check(self) -> None:
        assert q.budget_reason("acme", Quota(cpu=1), 10**6, SPEC) is None


class TestCpuHours:
    def test_a_job_runs_from_its_decision_to_its_release(self) -> None:
        a = q.Accounts()
        a.decided(shared("j", 2, at=T0))  # 4 cores
        assert a.cpu_hours("acme", (T0 + timedelta(minutes=90)).timestamp()) == pytest.approx(6.0)
        a.released("j", T0 + timedelta(hours=2))
        later = (T0 + timedelta(days=3)).timestamp()
        assert a.cpu_hours("acme", later) == pytest.approx(8.0)
        assert a.usage("acme", later).cpu == 0 and a.usage("acme", later).jobs == 0

    def test_a_revision_changes_the_rate(self) -> None:
        a = q.Accounts()
        a.decided(shared("j", 1, at=T0))  # 2 cores for 1 h, then 6 cores for 1 h
        a.decided(shared("j", 3, revision=2, at=T0 + timedelta(hours=1)))
        assert a.cpu_hours("acme", (T0 + timedelta(hours=2)).timestamp()) == pytest.approx(8.0)

    def test_hours_older_than_30_days_drop_out_and_memory_stays_bounded(self) -> None:
        a = q.Accounts()
        for i in range(60):  # a 1-core-hour... job every day for 60 days
            start = T0 + timedelta(days=i)
            a.decided(msgspec.structs.replace(shared(f"j{i}", 1, at=start), resources=Resources(cpu=1, memory_mb=1)))
            a.released(f"j{i}", start + timedelta(hours=1))
        now = (T0 + timedelta(days=60)).timestamp()
        assert a.cpu_hours("acme", now) == pytest.approx(30.0, abs=1.0)
        assert len(a.hours["acme"]) <= q.WINDOW_HOURS + 2

    def test_tenants_are_apart(self) -> None:
        a = q.Accounts()
        a.decided(shared("x", 1, tenant="acme"))
        a.decided(shared("y", 2, tenant="globex"))
        assert a.used("acme").cpu_m == 2000 and a.used("globex").cpu_m == 4000
        assert a.used("nobody") == q.NOTHING


# --- the property: usage is the sum over the live jobs, whatever happened --------------
Op = tuple[str, int, int]  # (kind, job, replicas)
ops = st.lists(
    st.tuples(st.sampled_from(["decide", "revise", "release", "redeliver"]), st.integers(0, 5), st.integers(0, 4)),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_usage_is_the_sum_over_live_jobs_and_never_negative(steps: list[Op]) -> None:
    a = q.Accounts()
    latest: dict[str, ev.PlacementDecided] = {}
    gone: set[str] = set()
    at = T0
    for kind, n, replicas in steps:
        job_id, tenant = f"j{n}", "acme" if n % 2 else "globex"
        at += timedelta(minutes=7)
        cur = latest.get(job_id)
        if kind == "release":
            a.released(job_id, at)
            gone.add(job_id)
            latest.pop(job_id, None)
        elif kind == "redeliver" and cur is not None:  # the ledger's copy of a decision applied already
            assert not a.decided(cur)
        elif kind in ("decide", "revise"):
            revision = 1 if cur is None else cur.revision + 1
            e = shared(job_id, replicas, tenant=tenant, revision=revision, at=at)
            counted = a.decided(e)
            assert counted == (job_id not in gone)
            if counted:
                latest[job_id] = e
        for t in ("acme", "globex"):
            expected = q.NOTHING
            for e in latest.values():
                if e.tenant == t:
                    expected = expected + q.share_of(e)
            used = a.used(t)
            assert used == expected
            assert min(used.cpu_m, used.memory_mb, used.gpu, used.jobs, used.instances) >= 0
            assert a.cpu_hours(t, at.timestamp()) >= 0


# --- scaling and re-placing within a quota ----------------------------------------------
class TestCap:
    def test_how_many_more_replicas_fit(self) -> None:
        each = q.per_replica(Resources(cpu=2, memory_mb=512))
        assert q.replicas_within(Quota(cpu=8), q.Share(cpu_m=4000), each) == 2
        assert q.replicas_within(Quota(cpu=8, memory_mb=600), q.Share(cpu_m=4000), each) == 1
        assert q.replicas_within(Quota(cpu=3), q.Share(cpu_m=4000), each) == 0  # a lowered quota
        assert q.replicas_within(Quota(jobs=1), q.Share(cpu_m=4000), each) is None

    def test_a_scale_up_over_quota_is_degraded_with_the_reason(self) -> None:
        w = fleet(a=16.0, b=16.0)
        d = msgspec.structs.replace(decision("j", {0: "a", 1: "b"}), tenant="acme")  # 2 x 2 cpu
        w.apply_decided(d)
        res = w.reservations["j"]
        cap = q.cap("acme", Quota(cpu=8), q.Share(cpu_m=4000, jobs=1), 2, q.per_replica(res.resources))
        assert cap == (4, "quota: tenant acme uses 8 of 8 cpu")
        plan = replan(res, w, NOW, TTL, wanted=6, cap=cap)
        assert plan is not None
        assert len(plan.assignments) == 4 and plan.missing == [4, 5]
        assert plan.failure is not None and plan.failure.reason == "quota: tenant acme uses 8 of 8 cpu"
        assert plan.failure.excluded.quota == 2
        out = events_of(res, plan)
        assert [type(e) for e in out] == [ev.PlacementDecided, ev.PlacementDegraded]
        assert all(e.tenant == "acme" for e in out)

    def test_a_move_off_a_lost_node_does_not_count_twice(self) -> None:
        w = fleet(a=16.0, b=16.0, c=16.0)
        w.apply_decided(msgspec.structs.replace(decision("j", {0: "a", 1: "b"}), tenant="acme"))
        w.update_node(free_node("b", state="down"), NOW)
        res = w.reservations["j"]
        cap = q.cap("acme", Quota(cpu=4), q.Share(cpu_m=4000, jobs=1), 2, q.per_replica(res.resources))
        assert cap is not None and cap[0] == 2  # at its quota: moves yes, more no
        plan = replan(res, w, NOW, TTL, cap=cap)
        assert plan is not None and plan.missing == []
        assert {a.node_id for a in plan.assignments} <= {"a", "c"}


# --- the decider: waits at a quota, and a chain cannot slip past it ---------------------
def of(tenant: str, p: Pending) -> Pending:
    p.event = msgspec.structs.replace(p.event, tenant=tenant)
    return p


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """test_placement_decider's rig (two 4-cpu nodes, PLACEMENTS in memory) with a quota book."""
    world = World()
    for node_id, cpu in CAPACITY.items():
        world.update_node(free_node(node_id, cpu), NOW)
    capacity_changed = asyncio.Event()
    ledger = Ledger(world, capacity_changed)
    stream = FakePlacements(ledger)
    decider = Decider(
        world, ledger, stream, FakeClock(), ttl=TTL, top_candidates=10, instance_types=[], quotas=q.QuotaBook()
    )
    stop = asyncio.Event()
    r = Rig(world, ledger, stream, decider, capacity_changed)
    r.tasks = [asyncio.create_task(stream.follow()), asyncio.create_task(decider.run(stop))]
    yield r
    stop.set()
    for task in r.tasks:
        task.cancel()


class TestTheDecider:
    async def test_one_chain_never_decides_past_a_quota(self, rig: Rig) -> None:
        rig.decider.quotas.config["acme"] = Quota(cpu=4)  # room for two 2-cpu jobs; the fleet has 4
        jobs = [of("acme", pending_job(f"a{i}", order=i)) for i in range(4)]
        outcomes = await rig.decide(*jobs)
        assert sorted(map(str, outcomes.values())) == ["decided", "decided", "pending", "pending"]
        assert rig.ledger.accounts.used("acme").cpu_m == 4000
        assert all(e.tenant == "acme" for e in rig.stream.messages if isinstance(e, ev.PlacementDecided))

    async def test_other_tenants_are_not_held_back(self, rig: Rig) -> None:
        rig.decider.quotas.config["acme"] = Quota(jobs=1)
        outcomes = await rig.decide(of("acme", pending_job("a1", order=1)), of("acme", pending_job("a2", order=2)))
        assert sorted(map(str, outcomes.values())) == ["decided", "pending"]
        assert await rig.decide(of("globex", pending_job("g1", order=3))) == {"g1": "decided"}

    async def test_at_its_deadline_a_waiting_job_fails_with_the_quota_reason(self, rig: Rig) -> None:
        rig.decider.quotas.config["acme"] = Quota(cpu=2)
        await rig.decide(of("acme", pending_job("a1", order=1)))
        p = of("acme", pending_job("a2", order=2))
        assert await rig.decider.decide(p, final=True) == "failed"
        failed = rig.stream.messages[-1]
        assert isinstance(failed, ev.PlacementFailed)
        assert failed.reason == "quota: tenant acme uses 2 of 2 cpu"
        assert failed.excluded.quota == failed.nodes_total == 2
        assert failed.tenant == "acme"

    async def test_a_release_makes_room(self, rig: Rig) -> None:
        rig.decider.quotas.config["acme"] = Quota(jobs=1)
        await rig.decide(of("acme", pending_job("a1", order=1)))
        p = of("acme", pending_job("a2", order=2))
        assert await rig.decider.decide(p) == "pending"
        seq = rig.stream.store(
            ev.PlacementReleased(event_id=ev.event_id_for("a1", s.PLACEMENT_RELEASED), job_id="a1", tenant="acme")
        )
        rig.capacity_changed.clear()
        await rig.ledger.catch_up(seq, timeout=5)
        assert rig.capacity_changed.is_set()
        assert await rig.decider.decide(p) == "decided"


def test_whose_quota_is_asked() -> None:
    assert whose("default", False, None) == "default"
    assert whose("default", False, "acme") == "acme"  # operators name any tenant
    assert whose("acme", True, None) == "acme"
    assert whose("acme", True, "acme") == "acme"
    with pytest.raises(RequestError) as e:
        whose("acme", True, "globex")
    assert e.value.code == 404


async def test_small_spec_is_one_cpu() -> None:  # the integration tests' arithmetic rests on it
    assert q.share_of_spec(SMALL_SPEC) == q.Share(cpu_m=1000, memory_mb=1, jobs=1)
    await asyncio.sleep(0)


class TestTheQuotaBook:
    def test_a_run_time_quota_replaces_the_tomls_and_its_removal_restores_it(self) -> None:
        book = q.QuotaBook(config={"acme": Quota(cpu=8)})
        assert book.of("acme") == (Quota(cpu=8), "config")
        assert book.of("globex") == (q.UNLIMITED, "none")
        assert book.put("acme", Quota(cpu=16))
        assert book.of("acme") == (Quota(cpu=16), "runtime")
        assert not book.put("acme", Quota(cpu=16))  # the watch brings back what quota.set applied: no change
        assert book.put("acme", None)
        assert book.of("acme") == (Quota(cpu=8), "config")


async def test_quota_set_through_a_tenant_import_is_refused() -> None:
    from types import SimpleNamespace

    from services.placement.tenants import Tenants

    t = Tenants(q.QuotaBook(), q.Accounts(), FakeClock(), lambda: None)
    msg = SimpleNamespace(subject=s.tenant_request_subject(s.QUOTA_SET), data=b'{"tenant": "acme", "quota": {}}')
    with pytest.raises(RequestError) as e:
        await t.set(msg)  # type: ignore[arg-type]
    assert e.value.code == 403


def test_the_budget_check_counts_what_the_tenant_used() -> None:
    from services.placement.tenants import Tenants

    accounts = q.Accounts()
    accounts.decided(shared("old", 1, at=T0 - timedelta(hours=2)))  # 2 cores for 2 h by FakeClock's now (T0)
    book = q.QuotaBook(config={"acme": Quota(cpu_hours=5)})
    t = Tenants(book, accounts, FakeClock(), lambda: None)

    def job(cpu: float, max_runtime_s: int | None) -> ev.JobAccepted:
        spec = msgspec.structs.replace(
            SMALL_SPEC, resources=Resources(cpu=cpu, memory_mb=1), max_runtime_s=max_runtime_s
        )
        return ev.JobAccepted(event_id="x", job_id="x", spec=spec, tenant="acme")

    assert t.over_budget(job(1, 3600)) is None  # 4 + 1 <= 5
    assert t.over_budget(job(2, 3600)) == (
        "quota: tenant acme used 4 of 5 cpu_hours in the last 30 days; "
        "this job may use 2 more (2 cpu x 1 replicas x 3600 s)"
    )
    assert t.over_budget(job(64, None)) is None  # no max_runtime_s: only once the budget is used up
    assert t.over_budget(msgspec.structs.replace(job(64, 3600), tenant="globex")) is None
