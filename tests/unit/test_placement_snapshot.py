"""The ledger's snapshot: snapshot(prefix) + fold(suffix) is exactly fold(all), for any event
sequence and any split point, and a snapshot never resurrects a released job nor loses a live one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import events as ev
from schemas import subjects as s
from services.placement import snapshot as snap
from services.placement.ledger import Ledger
from services.placement.state import World
from tests.support.events import free_node
from tests.support.placement import NOW, decision

NODES = ("a", "b", "c")
JOBS = ("j0", "j1", "j2", "j3")
TENANTS = ("acme", "globex")
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def fresh() -> Ledger:
    w = World()
    for nid in NODES[:2]:  # "c" never reports: its bookings are orphans until it does
        w.update_node(free_node(nid, 16), NOW)
    return Ledger(w, asyncio.Event())


def fold(ledger: Ledger, events: list[ev.Event], first_seq: int = 1) -> Ledger:
    for i, e in enumerate(events):
        ledger.apply(first_seq + i, ev.encode(e))
    return ledger


@st.composite
def event(draw: st.DrawFn) -> ev.Event:
    job = draw(st.sampled_from(JOBS))
    tenant = TENANTS[JOBS.index(job) % 2]
    at = T0 + timedelta(minutes=draw(st.integers(0, 600)))
    kind = draw(st.sampled_from(["shared", "shared", "dedicated", "failed", "released", "degraded"]))
    revision = draw(st.integers(1, 3))
    if kind == "shared":
        nodes = draw(st.dictionaries(st.integers(0, 2), st.sampled_from(NODES), max_size=3))
        wanted = max([*nodes, draw(st.integers(0, 2))]) + 1
        changes = [
            ev.Change(replica=r, from_="a", to=None, reason="node_lost") for r in range(wanted) if r not in nodes
        ]
        d = decision(job, nodes, revision=revision, replicas=wanted, changes=changes)
        return msgspec.structs.replace(d, at=at, tenant=tenant)
    if kind == "dedicated":
        d = decision(job, {}, revision=revision, replicas=draw(st.integers(1, 2)))
        return msgspec.structs.replace(d, at=at, tenant=tenant, cluster="dedicated")
    if kind == "failed":
        return ev.PlacementFailed(
            event_id=ev.event_id_for(job, s.PLACEMENT_FAILED),
            job_id=job,
            reason="no",
            nodes_total=0,
            excluded=ev.Excluded(),
            at=at,
        )
    if kind == "released":
        return ev.PlacementReleased(event_id=ev.event_id_for(job, s.PLACEMENT_RELEASED), job_id=job, at=at)
    return ev.PlacementDegraded(
        event_id=f"{job}:degraded:{revision}", job_id=job, revision=revision, missing=[0], reason="x", at=at
    )


def orphans(w: World) -> dict[str, tuple[float, int, int]]:
    """What each unheard node will be booked with once it reports (the net of its orphan entries)."""
    out = {}
    for nid, entries in w._orphan.items():
        net = (sum(e[0] for e in entries), sum(e[1] for e in entries), sum(e[2] for e in entries))
        if any(net):
            out[nid] = net
    return out


def view(ledger: Ledger) -> dict[str, Any]:
    """Everything the ledger decides with: bookings per node, per-job revisions, tenants' usage."""
    w, acc = ledger.world, ledger.accounts
    return {
        "reserved": {nid: (n.reserved_cpu, n.reserved_memory_mb) for nid, n in w.nodes.items()},
        "orphans": orphans(w),
        "reservations": {j: (r.revision, r.node_ids, r.replicas, r.missing_reasons) for j, r in w.reservations.items()},
        "holders": w.holders,
        "short": w.short,
        "unheard": w.unheard,
        "degraded": w.degraded,
        "released": w.released,
        "decided": ledger.decided,
        "ended": ledger.ended,
        "ended_at": list(ledger.ended_at.items()),
        "awaited": list(ledger.awaited.items()),
        "dedicated": {j: d.revision for j, d in ledger.dedicated.items()},
        "live": {j: (x.tenant, x.revision, x.share, x.since) for j, x in acc.live.items()},
        "totals": acc.totals,
        "jobs_of": acc.jobs_of,
        "hours": acc.hours,
        "gone": acc.gone,
        "usage": {t: acc.cpu_hours(t, (T0 + timedelta(days=1)).timestamp()) for t in TENANTS},
        "applied": ledger.applied_seq,
    }


def restarted(prefix: list[ev.Event]) -> Ledger:
    """A new ledger loaded from the snapshot (encoded and decoded) of ``prefix``'s fold."""
    return snap_round_trip(fold(fresh(), prefix))


def snap_round_trip(ledger: Ledger) -> Ledger:
    """A new ledger loaded from ``ledger``'s snapshot (encoded and decoded), as far as it folded."""
    body = snap.decode(snap.encode(snap.capture(ledger)))
    assert body is not None
    out = fresh()
    snap.restore(body, out)
    out.applied_seq = ledger.applied_seq
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(event(), max_size=30), st.data())
def test_snapshot_and_tail_fold_to_the_full_replay(events: list[ev.Event], data: st.DataObject) -> None:
    split = data.draw(st.integers(0, len(events)))
    full = fold(fresh(), events)

    resumed = fold(restarted(events[:split]), events[split:], first_seq=split + 1)

    assert view(resumed) == view(full)


@settings(max_examples=200, deadline=None)
@given(st.lists(event(), max_size=30), st.data())
def test_a_snapshot_never_resurrects_a_released_job_nor_loses_a_live_one(
    events: list[ev.Event], data: st.DataObject
) -> None:
    split = data.draw(st.integers(0, len(events)))
    resumed = fold(restarted(events[:split]), events[split:], first_seq=split + 1)

    released = {e.job_id for e in events if isinstance(e, ev.PlacementReleased)}
    live = {
        e.job_id
        for e in events
        if isinstance(e, ev.PlacementDecided) and e.job_id not in released and e.cluster == "shared"
    }
    assert not released & set(resumed.world.reservations)
    assert not released & set(resumed.accounts.live)
    assert not released & set(resumed.dedicated)
    assert live == set(resumed.world.reservations)


def test_a_body_of_another_format_or_garbage_is_not_loaded() -> None:
    assert snap.decode(b"\x00garbage") is None
    assert snap.decode(snap.encode(snap.LedgerBody(format=snap.FORMAT + 1))) is None
    assert snap.decode(snap.encode(snap.LedgerBody())) == snap.LedgerBody()


def test_ended_jobs_are_forgotten_after_the_window_and_live_ones_kept() -> None:
    early, late = T0, T0 + timedelta(hours=2)
    ledger = fold(
        fresh(),
        [
            msgspec.structs.replace(decision("old", {0: "a"}), at=early),
            ev.PlacementReleased(event_id="old:r", job_id="old", at=early),
            ev.PlacementFailed(
                event_id="f:f", job_id="f", reason="no", nodes_total=0, excluded=ev.Excluded(), at=early
            ),
            msgspec.structs.replace(decision("new", {0: "a"}), at=late),
            ev.PlacementReleased(event_id="new:r", job_id="new", at=late),
            msgspec.structs.replace(decision("live", {0: "b"}), at=early),
        ],
    )

    assert ledger.forget((early + timedelta(hours=1)).timestamp(), early.timestamp()) == 2

    assert ledger.decided == {"new", "live"}
    assert ledger.world.released == {"new"} and ledger.accounts.gone == {"new"}
    assert list(ledger.ended_at) == ["new"]
    assert set(ledger.world.reservations) == {"live"}
    body = snap.capture(ledger)
    assert body.decided == ["live", "new"] and body.released == ["new"]


def test_a_job_released_before_any_decision_is_remembered_until_its_accepted_is_answered() -> None:
    """Placement far behind on JOBS (or down): the job's cancel was released long before its
    ``job.accepted`` arrives. The keep window must not forget it, or placement would book a
    reservation nobody releases (the 1,000,000-job soak's ``revised_after_release``)."""
    ended, later = T0, T0 + timedelta(hours=2)
    ledger = fold(fresh(), [ev.PlacementReleased(event_id="p:r", job_id="p", at=ended)])

    assert ledger.forget(later.timestamp(), ended.timestamp()) == 0  # past the window: awaited
    assert "p" in ledger.ended and list(ledger.awaited) == ["p"] and not ledger.ended_at
    resumed = restarted([ev.PlacementReleased(event_id="p:r", job_id="p", at=ended)])
    resumed.forget(later.timestamp(), ended.timestamp())
    assert view(snap_round_trip(resumed)) == view(resumed)

    failed = ev.PlacementFailed(
        event_id="p:f", job_id="p", reason="job ended before it was placed", excluded=ev.Excluded(), at=later
    )
    fold(ledger, [failed], first_seq=2)  # answered: forgotten with the window from now on
    assert not ledger.awaited and list(ledger.ended_at) == ["p"]
    assert ledger.forget((later + timedelta(hours=2)).timestamp(), ended.timestamp()) == 1
    assert "p" not in ledger.ended and "p" not in ledger.decided


def test_an_awaited_job_is_forgotten_once_the_stream_can_no_longer_deliver_its_accepted() -> None:
    ended = T0
    ledger = fold(fresh(), [ev.PlacementReleased(event_id="p:r", job_id="p", at=ended)])
    ledger.forget((ended + timedelta(hours=2)).timestamp(), ended.timestamp())

    assert ledger.forget((ended + timedelta(hours=2)).timestamp(), (ended + timedelta(seconds=1)).timestamp()) == 1
    assert not ledger.awaited and "p" not in ledger.ended and "p" not in ledger.world.released
