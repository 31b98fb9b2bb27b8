"""The decider's group commit and its conflict-and-redo path, against an in-memory PLACEMENTS.

:class:`FakePlacements` applies nats-server's rules for a chain, in the order observed on
nats-server 2.15.1: pipelined, each message's expected last sequence first, then its
message id (a duplicate is acked with the first copy's sequence), then its expected last
message id; an atomic batch, the first message's expected sequence, then duplicates, stored
whole or not at all. Every stored message reaches the ledger a little later, as through
the real follower, so a redo that did not wait for the catch-up would be refused again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import pytest

from schemas import events as ev
from schemas import subjects as s
from schemas.jobs import Defaults, Resources, decode_job_request, normalise
from services.placement.decider import Decider, Pending
from services.placement.ledger import Ledger
from services.placement.ports import SystemClock
from services.placement.scales import Scales
from services.placement.state import World
from services.runtime.publisher import WRONG_LAST_MSG_ID, Ack, PublishError, WrongLastSequence
from tests.support.events import decided, free_node
from tests.support.placement import NOW, TTL

CAPACITY = {"a": 4.0, "b": 4.0}
"""Two docker nodes of 4 cpu: room for four of the 2-cpu jobs below."""


class FakeClock:
    def monotonic(self) -> float:
        return NOW

    def wall(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC)


class FakePlacements:
    """PLACEMENTS in memory, as the decider's :class:`~services.placement.ports.Chain`."""

    def __init__(self, ledger: Ledger, lag: float = 0.005) -> None:
        self.messages: list[ev.Event] = []
        self.msg_ids: list[str] = []
        """Each stored message's ``Nats-Msg-Id``."""
        self.ids: dict[str, int] = {}
        """Message id -> sequence (the server's duplicate window)."""
        self.slip_in: dict[int, list[ev.Event]] = {}
        """Foreign messages stored just before message *i* of the next chain (another instance got in first)."""
        self.fail_at: dict[int, Exception] = {}
        """Errors answered instead of message *i* of the next chain (nothing stored)."""
        self.bases: list[int] = []
        """The expected last sequence of each chain published."""
        self.asked = 0
        self.lag = lag
        self._ledger = ledger
        self._feed: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

    def store(self, e: ev.Event, msg_id: str = "") -> int:
        """Store ``e`` with ``msg_id`` (default: its event id, as a foreign writer's plain publish)."""
        self.messages.append(e)
        self.msg_ids.append(msg_id or e.event_id)
        seq = self.ids[msg_id or e.event_id] = len(self.messages)
        self._feed.put_nowait((seq, ev.encode(e)))
        return seq

    async def follow(self) -> None:
        """The ledger's follower: each stored message, in order, ``lag`` after the previous."""
        while True:
            seq, data = await self._feed.get()
            await asyncio.sleep(self.lag)
            self._ledger.apply(seq, data)

    async def publish_chain(
        self,
        events: Sequence[ev.Event],
        expected_last_seq: int,
        *,
        atomic: bool = False,
        msg_ids: Sequence[str] | None = None,
    ) -> list[Ack | Exception]:
        await asyncio.sleep(0)  # a round trip
        ids = [e.event_id for e in events] if msg_ids is None else list(msg_ids)
        self.bases.append(expected_last_seq)
        slip, self.slip_in = self.slip_in, {}
        fail, self.fail_at = self.fail_at, {}
        if atomic:
            for f in slip.get(0, ()):
                self.store(f)
            last = len(self.messages)
            if expected_last_seq != last:
                return [WrongLastSequence(400, 10071, f"wrong last sequence: {last}")] * len(events)
            if any(i in self.ids for i in ids):
                return [WrongLastSequence(400, 10201, "atomic publish batch contains duplicate message id")] * len(
                    events
                )
            return [Ack(stream="PLACEMENTS", seq=self.store(e, i)) for e, i in zip(events, ids, strict=True)]
        out: list[Ack | Exception] = []
        for i, e in enumerate(events):
            for f in slip.get(i, ()):
                self.store(f)
            last = len(self.messages)
            if i in fail:
                out.append(fail[i])
            elif expected_last_seq + i != last:
                out.append(WrongLastSequence(400, 10071, f"wrong last sequence: {last}"))
            elif ids[i] in self.ids:
                out.append(Ack(stream="PLACEMENTS", seq=self.ids[ids[i]], duplicate=True))
            elif i and self.msg_ids[-1] != ids[i - 1]:
                out.append(WrongLastSequence(400, WRONG_LAST_MSG_ID, f"wrong last msg ID: {self.msg_ids[-1]}"))
            else:
                out.append(Ack(stream="PLACEMENTS", seq=self.store(e, ids[i])))
        return out

    def job_ids(self) -> list[str]:
        return [getattr(e, "job_id", "") for e in self.messages]

    async def last_seq(self) -> int:
        self.asked += 1
        return len(self.messages)


def job(job_id: str, cpu: float = 2, order: int = 0) -> Pending:
    raw = f'{{"name": "{job_id}", "resources": {{"cpu": {cpu}, "memory_mb": 512}}}}'
    spec = normalise(decode_job_request(raw.encode()), Defaults())
    accepted = ev.JobAccepted(event_id=f"{job_id}:accepted", job_id=job_id, spec=spec)
    return Pending(accepted, None, NOW + 30, order)  # type: ignore[arg-type]  # no delivery: the decider never acks


def foreign(job_id: str, node_id: str, cpu: float = 2) -> ev.PlacementDecided:
    """Another instance's decision (the same event id as ours would be for the same job)."""
    return msgspec.structs.replace(
        decided(job_id),
        assignments=[ev.Assignment(replica=0, node_id=node_id)],
        resources=Resources(cpu=cpu, memory_mb=512),
    )


def released(job_id: str) -> ev.PlacementReleased:
    return ev.PlacementReleased(event_id=ev.event_id_for(job_id, s.PLACEMENT_RELEASED), job_id=job_id)


@dataclass
class Rig:
    world: World
    ledger: Ledger
    stream: FakePlacements
    decider: Decider
    capacity_changed: asyncio.Event
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def decide(self, *jobs: Pending) -> dict[str, str | BaseException]:
        """Queue every job at once (one group commit) and wait for each outcome."""
        outcomes = await asyncio.gather(*(self.decider.decide(p) for p in jobs), return_exceptions=True)
        await self.ledger.catch_up(len(self.stream.messages), timeout=5)  # the follower is done
        return {p.event.job_id: o for p, o in zip(jobs, outcomes, strict=True)}

    def stored(self) -> dict[str, ev.Event]:
        return {e.job_id: e for e in self.stream.messages if isinstance(e, ev.JobEvent)}

    def booked_by_the_stream(self) -> dict[str, float]:
        """Each live job's highest revision's assignments."""
        latest: dict[str, ev.PlacementDecided] = {}
        released = {e.job_id for e in self.stream.messages if isinstance(e, ev.PlacementReleased)}
        for e in self.stream.messages:
            if (
                isinstance(e, ev.PlacementDecided)
                and e.resources is not None
                and e.job_id not in released
                and (e.job_id not in latest or e.revision > latest[e.job_id].revision)
            ):
                latest[e.job_id] = e
        cpu: dict[str, float] = {}
        for e in latest.values():
            assert e.resources is not None
            for a in e.assignments:
                cpu[a.node_id or ""] = cpu.get(a.node_id or "", 0.0) + e.resources.cpu
        return {n: c for n, c in cpu.items() if c}

    def booked_locally(self) -> dict[str, float]:
        return {nid: n.reserved_cpu for nid, n in self.world.nodes.items() if n.reserved_cpu}

    def assert_consistent(self) -> None:
        """The local ledger is the stream's, and no node is booked beyond its capacity."""
        assert self.booked_locally() == self.booked_by_the_stream()
        assert all(cpu <= CAPACITY[n] for n, cpu in self.booked_by_the_stream().items()), self.booked_by_the_stream()
        assert set(self.world.reservations) == {
            e.job_id for e in self.stream.messages if isinstance(e, ev.PlacementDecided)
        } - {e.job_id for e in self.stream.messages if isinstance(e, ev.PlacementReleased)}


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    world = World()
    for node_id, cpu in CAPACITY.items():
        world.update_node(free_node(node_id, cpu), NOW)
    capacity_changed = asyncio.Event()
    ledger = Ledger(world, capacity_changed)
    stream = FakePlacements(ledger)
    decider = Decider(world, ledger, stream, FakeClock(), ttl=TTL, top_candidates=10, instance_types=[])
    stop = asyncio.Event()
    r = Rig(world, ledger, stream, decider, capacity_changed)
    r.tasks = [asyncio.create_task(stream.follow()), asyncio.create_task(decider.run(stop))]
    yield r
    stop.set()
    for task in r.tasks:  # the decider would notice ``stop`` only at its next 0.5 s wake-up
        task.cancel()


JOBS = ("j1", "j2", "j3")


def three_jobs() -> list[Pending]:
    return [job(j, order=i) for i, j in enumerate(JOBS)]


class TestAnUncontendedChain:
    async def test_is_stored_whole_on_the_ledgers_sequence(self, rig: Rig) -> None:
        outcomes = await rig.decide(*three_jobs())

        assert outcomes == dict.fromkeys(JOBS, "decided")
        assert rig.stream.bases == [0]
        assert list(rig.stored()) == list(JOBS)  # priority ties in submission order
        assert rig.decider.stats == {"decisions": 3, "commits": 1, "conflicts": 0, "revisions": 0, "degraded": 0}
        assert rig.decider.tail == 3
        rig.assert_consistent()

    async def test_the_next_chain_expects_the_last_ack(self, rig: Rig) -> None:
        await rig.decide(job("j1"))
        await rig.decide(job("j2"))
        assert rig.stream.bases == [0, 1]


class TestARefusedChainIsUndoneCaughtUpAndRedecided:
    async def test_second_message_refused_by_sequence_then_by_last_message_id(self, rig: Rig) -> None:
        """Pipelined: j1 is stored, another instance's decision slips in, j2 finds the wrong last
        sequence (10071, which says where the stream is) and j3 the right sequence but the wrong
        last message id (10070)."""
        rig.stream.slip_in = {1: [foreign("f", "b", cpu=4)]}  # decided knowing j1 on a: b is full

        outcomes = await rig.decide(*three_jobs())

        assert rig.stream.bases == [0, 2]  # the redo waited for the ledger to reach the foreign decision
        assert outcomes == {"j1": "decided", "j2": "decided", "j3": "pending"}
        assert rig.decider.stats["conflicts"] == 2
        assert rig.stream.job_ids() == ["j1", "f", "j2"]
        assert not rig.world.released & set(JOBS)  # an undone decision leaves no "released" mark behind
        rig.assert_consistent()

    async def test_first_message_refused_by_sequence_then_by_last_message_id(self, rig: Rig) -> None:
        rig.stream.slip_in = {0: [foreign("f", "a", cpu=4)]}

        outcomes = await rig.decide(*three_jobs())

        assert rig.stream.bases == [0, 1]
        assert outcomes == {"j1": "decided", "j2": "decided", "j3": "pending"}
        assert rig.decider.stats["conflicts"] == 3
        rig.assert_consistent()

    async def test_an_atomic_batch_refused_by_sequence(self, rig: Rig) -> None:
        rig.decider.atomic = True
        rig.stream.slip_in = {0: [foreign("f", "a", cpu=4)]}

        outcomes = await rig.decide(*three_jobs())

        assert rig.stream.bases == [0, 1]
        assert rig.stream.asked == 0  # 10071 says where the stream is
        assert outcomes == {"j1": "decided", "j2": "decided", "j3": "pending"}
        assert rig.booked_by_the_stream() == {"a": 4, "b": 4}
        rig.assert_consistent()

    async def test_an_atomic_batch_refused_for_a_duplicate_asks_the_stream(self, rig: Rig) -> None:
        """The stream holds one of this attempt's messages already (a re-publish of the same
        attempt, e.g. after a lost ack: same message ids) at the sequence the chain expects, and
        the ledger has not applied it yet: the batch passes the sequence check and is refused
        (10201) without saying where the stream is. So the decider asks it, catches up, finds j2
        decided, and decides the others again."""
        rig.decider.atomic = True
        rig.decider.instance = "me"
        rig.stream.lag = 0.3  # the follower is surely behind when the batch is decided
        rig.stream.store(foreign("j2", "a"), msg_id=f"{foreign('j2', 'a').event_id}~me.1")
        rig.decider.tail = 1

        outcomes = await rig.decide(*three_jobs())

        assert rig.stream.asked == 1
        assert rig.stream.bases == [1, 1]
        assert outcomes == {"j1": "decided", "j2": "already", "j3": "decided"}
        assert rig.world.reservations["j2"].node_ids == ("a",)  # the stream's decision, not ours
        rig.assert_consistent()

    @pytest.mark.parametrize("atomic", [False, True])
    async def test_another_instances_copy_not_yet_followed_is_refused_by_sequence(self, rig: Rig, atomic: bool) -> None:
        """Another instance stored j2 and the follower lags: our chain expects the ledger's
        sequence, so it is refused from its first message on (our message ids never match the
        other copy's), and j2 is found decided after the catch-up."""
        rig.decider.atomic = atomic
        rig.stream.lag = 0.1
        rig.stream.store(foreign("j2", "a"))

        outcomes = await rig.decide(*three_jobs())

        assert rig.stream.bases == [0, 1]
        assert outcomes == {"j1": "decided", "j2": "already", "j3": "decided"}
        assert sum(isinstance(e, ev.PlacementDecided) and e.job_id == "j2" for e in rig.stream.messages) == 1
        rig.assert_consistent()


class TestADuplicate:
    async def test_is_undone_and_not_booked_twice(self, rig: Rig) -> None:
        """Another instance decided j2 on node a, stored before our chain: the whole chain is
        refused (by sequence, then by last message id), caught up and redone; j2 keeps the
        stream's decision."""
        rig.stream.slip_in = {0: [foreign("j2", "a")]}

        outcomes = await rig.decide(*three_jobs())

        assert outcomes == {"j1": "decided", "j2": "already", "j3": "decided"}
        assert rig.world.reservations["j2"].node_ids == ("a",)
        assert sum(isinstance(e, ev.PlacementDecided) and e.job_id == "j2" for e in rig.stream.messages) == 1
        assert rig.booked_locally() == {"a": 4, "b": 2}
        rig.assert_consistent()

    async def test_of_a_refused_message_does_not_let_the_next_one_through(self, rig: Rig) -> None:
        """Another instance's decision for j2 slips in right after our j1 (it held j2 past
        ack_wait). Our j2 is refused by sequence; j3 finds exactly the sequence it expects, but
        its expected last message id is our j2's attempt id, which the foreign copy (same event
        id, its own attempt) does not carry: j3 is refused too, and decided again on the caught-up
        ledger. Before message ids were unique per attempt, j3 was stored here."""
        rig.stream.slip_in = {1: [foreign("j2", "a")]}

        outcomes = await rig.decide(*three_jobs())

        assert outcomes == {"j1": "decided", "j2": "already", "j3": "decided"}
        assert rig.stream.job_ids() == ["j1", "j2", "j3"]
        assert rig.world.reservations["j2"].node_ids == ("a",)
        assert rig.decider.stats["conflicts"] == 2
        rig.assert_consistent()

    async def test_message_ids_are_unique_per_attempt_and_keep_the_event_id(self, rig: Rig) -> None:
        rig.stream.slip_in = {0: [foreign("f", "a")]}

        await rig.decide(job("j1"))

        ours = [
            (m, e)
            for m, e in zip(rig.stream.msg_ids, rig.stream.messages, strict=True)
            if getattr(e, "job_id", "") == "j1"
        ]
        assert [m for m, _ in ours] == [f"{ours[0][1].event_id}~{rig.decider.instance}.2"]  # attempt 1 was refused
        assert ours[0][1].event_id == ev.event_id_for("j1", s.PLACEMENT_DECIDED)


class TestOtherOutcomes:
    async def test_a_publish_error_fails_the_request_and_undoes_its_reservation(self, rig: Rig) -> None:
        rig.stream.fail_at = {0: PublishError(503, 0, "no stream captures the subject (no responders)")}

        outcomes = await rig.decide(job("j1"))

        assert isinstance(outcomes["j1"], PublishError)
        assert rig.world.reservations == {}
        assert rig.stream.messages == []
        rig.assert_consistent()

    async def test_a_timeout_fails_only_its_request_and_the_rest_is_redone(self, rig: Rig) -> None:
        rig.stream.fail_at = {1: TimeoutError("no JetStream ack in time")}

        outcomes = await rig.decide(*three_jobs())

        assert outcomes["j1"] == "decided" and outcomes["j3"] == "decided"
        assert isinstance(outcomes["j2"], TimeoutError)
        rig.assert_consistent()

    async def test_a_job_released_before_its_decision_fails_and_is_never_booked(self, rig: Rig) -> None:
        rig.stream.store(released("j1"))
        await rig.ledger.catch_up(1, timeout=1)
        assert rig.capacity_changed.is_set()

        outcomes = await rig.decide(job("j1"))

        assert outcomes == {"j1": "failed"}
        failed = rig.stored()["j1"]
        assert isinstance(failed, ev.PlacementFailed) and failed.reason == "job ended before it was placed"
        assert rig.world.reservations == {}
        rig.assert_consistent()

    async def test_a_job_that_does_not_fit_stays_pending_and_nothing_is_published(self, rig: Rig) -> None:
        outcomes = await rig.decide(job("big", cpu=8))

        assert outcomes == {"big": "pending"}
        assert rig.stream.bases == []

    async def test_a_job_decided_before_is_already_decided(self, rig: Rig) -> None:
        rig.stream.store(foreign("j1", "a"))
        await rig.ledger.catch_up(1, timeout=1)

        assert await rig.decide(job("j1")) == {"j1": "already"}
        assert rig.stream.bases == []


def moved(job_id: str, node_id: str, was: str, revision: int = 2) -> ev.PlacementDecided:
    """Another instance's re-placement of ``job_id`` (the same event id as ours would be)."""
    return msgspec.structs.replace(
        foreign(job_id, node_id),
        event_id=ev.revision_event_id(job_id, s.PLACEMENT_DECIDED, revision),
        revision=revision,
        changes=[ev.Change(replica=0, from_=was, to=node_id, reason="node_lost")],
    )


def down(rig: Rig, node_id: str) -> None:
    st = rig.world.nodes[node_id].status
    rig.world.update_node(msgspec.structs.replace(st, state="down"), NOW)


class TestARePlacement:
    async def test_moves_a_lost_node_s_replica_in_a_new_revision(self, rig: Rig) -> None:
        await rig.decide(job("j1"))
        down(rig, "a")

        assert await rig.decider.move("j1") == "moved"
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)

        second = rig.stream.messages[-1]
        assert isinstance(second, ev.PlacementDecided) and second.revision == 2
        assert second.event_id == "j1:placement.decided:2"
        assert [(a.replica, a.node_id) for a in second.assignments] == [(0, "b")]
        assert second.changes == [ev.Change(replica=0, from_="a", to="b", reason="node_lost")]
        assert second.replicas == 1 and second.resources == Resources(cpu=2, memory_mb=512)
        assert rig.decider.stats["revisions"] == 1
        rig.assert_consistent()

    async def test_refused_on_conflict_is_undone_and_redone_on_the_caught_up_ledger(self, rig: Rig) -> None:
        await rig.decide(job("j1"))
        down(rig, "a")
        rig.stream.slip_in = {0: [foreign("f", "b", cpu=1)]}  # b has 2 left, still room for j1

        assert await rig.decider.move("j1") == "moved"
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)

        assert rig.stream.bases == [0, 1, 2]  # j1's first decision, the refused move, the redo
        assert rig.decider.stats["conflicts"] == 1
        assert rig.stream.job_ids() == ["j1", "f", "j1"]
        assert rig.world.reservations["j1"].revision == 2
        rig.assert_consistent()

    async def test_refused_because_another_instance_moved_it_first_stores_nothing(self, rig: Rig) -> None:
        await rig.decide(job("j1"))
        down(rig, "a")
        rig.stream.slip_in = {0: [moved("j1", "b", "a")]}

        assert await rig.decider.move("j1") == "nothing"
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)

        assert sum(isinstance(e, ev.PlacementDecided) and e.revision == 2 for e in rig.stream.messages) == 1
        assert rig.world.reservations["j1"].node_ids == ("b",)  # theirs, applied once ours was undone
        rig.assert_consistent()

    async def test_refused_because_the_job_was_released_stores_nothing(self, rig: Rig) -> None:
        await rig.decide(job("j1"))
        down(rig, "a")
        rig.stream.slip_in = {0: [released("j1")]}

        assert await rig.decider.move("j1") == "nothing"
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)

        assert rig.world.reservations == {} and rig.booked_locally() == {}
        rig.assert_consistent()

    async def test_fitting_nowhere_stores_the_revision_and_its_degraded_event_in_one_chain(self, rig: Rig) -> None:
        await rig.decide(job("j1", cpu=4))
        await rig.decide(job("j2", cpu=4))
        down(rig, "a")

        assert await rig.decider.move("j1") == "moved"
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)

        second, gone = rig.stream.messages[-2:]
        assert isinstance(second, ev.PlacementDecided) and second.assignments == []
        assert second.changes == [ev.Change(replica=0, from_="a", to=None, reason="node_lost")]
        assert isinstance(gone, ev.PlacementDegraded) and (gone.revision, gone.missing) == (2, [0])
        assert rig.stream.bases[-1] == 2 and rig.world.degraded == {"j1": 2} and rig.world.short == {"j1"}
        assert await rig.decider.move("j1") == "nothing"  # no capacity yet: nothing new to say
        rig.assert_consistent()


class TestAScale:
    async def test_shrink_and_growth_are_new_revisions_with_reason_scale(self, rig: Rig) -> None:
        await rig.decide(job("j1", cpu=1))
        assert await rig.decider.scale("j1", 3) == "scaled"
        rig.capacity_changed.clear()
        assert await rig.decider.scale("j1", 2) == "scaled"
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)

        second, third = rig.stream.messages[-2:]
        assert isinstance(second, ev.PlacementDecided) and (second.revision, second.replicas) == (2, 3)
        assert {c.reason for c in second.changes} == {"scale"} and len(second.changes) == 2
        assert isinstance(third, ev.PlacementDecided) and (third.revision, third.replicas) == (3, 2)
        assert [(c.replica, c.to) for c in third.changes] == [(2, None)]
        assert rig.capacity_changed.is_set()  # the shrink freed room: pending jobs are tried again
        assert rig.booked_by_the_stream() == {"a": 1, "b": 1}
        rig.assert_consistent()

    async def test_refused_on_conflict_is_undone_and_redone_on_the_caught_up_ledger(self, rig: Rig) -> None:
        await rig.decide(job("j1"))
        rig.stream.slip_in = {0: [foreign("f", "b", cpu=4)]}  # b is full now: the growth must go to a

        assert await rig.decider.scale("j1", 2) == "scaled"
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)

        assert rig.decider.stats["conflicts"] == 1
        assert rig.stream.job_ids() == ["j1", "f", "j1"]
        second = rig.stream.messages[-1]
        assert isinstance(second, ev.PlacementDecided) and second.revision == 2
        assert second.changes == [ev.Change(replica=1, from_=None, to="a", reason="scale")]
        rig.assert_consistent()

    async def test_growth_that_fits_nowhere_is_degraded_in_the_same_chain(self, rig: Rig) -> None:
        await rig.decide(job("j1", cpu=4))

        assert await rig.decider.scale("j1", 3) == "scaled"
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)

        second, gone = rig.stream.messages[-2:]
        assert isinstance(second, ev.PlacementDecided) and len(second.assignments) == 2
        assert isinstance(gone, ev.PlacementDegraded) and (gone.revision, gone.missing) == (2, [2])
        assert rig.world.short == {"j1"}
        rig.assert_consistent()

    async def test_of_a_released_job_or_to_the_same_count_stores_nothing(self, rig: Rig) -> None:
        await rig.decide(job("j1"), job("j2"))
        assert await rig.decider.scale("j1", 1) == "nothing"
        rig.stream.store(released("j2"))
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)

        assert await rig.decider.scale("j2", 2) == "nothing"
        assert len(rig.stream.messages) == 3
        rig.assert_consistent()

    async def test_released_while_in_flight_stores_nothing(self, rig: Rig) -> None:
        await rig.decide(job("j1"))
        rig.stream.slip_in = {0: [released("j1")]}

        assert await rig.decider.scale("j1", 2) == "nothing"
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)

        assert rig.world.reservations == {} and rig.booked_locally() == {}
        rig.assert_consistent()

    async def test_requests_of_one_job_in_one_batch_apply_in_order_and_the_latest_wins(self, rig: Rig) -> None:
        await rig.decide(job("j1", cpu=1))
        down(rig, "a")  # and a move of the same job in the same batch

        outcomes = await asyncio.gather(rig.decider.move("j1"), rig.decider.scale("j1", 4), rig.decider.scale("j1", 2))
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)

        assert list(outcomes) == ["moved", "scaled", "scaled"]
        revisions = [e for e in rig.stream.messages if isinstance(e, ev.PlacementDecided)]
        assert [(e.revision, e.wanted) for e in revisions] == [(1, 1), (2, 1), (3, 4), (4, 2)]
        assert rig.world.reservations["j1"].replicas == (0, 1)
        rig.assert_consistent()

    async def test_a_dedicated_job_gets_instance_types_for_the_new_count(self, rig: Rig) -> None:
        d = decided(
            "d1",
            cluster="dedicated",
            assignments=[ev.Assignment(replica=0, instance_type="t3.large")],
            resources=Resources(cpu=2, memory_mb=512),
        )
        rig.stream.store(d)
        await rig.ledger.catch_up(1, timeout=1)

        assert await rig.decider.scale("d1", 2) == "scaled"
        assert await rig.decider.scale("d1", 2) == "nothing"  # known at once, before the follower has it
        second = rig.stream.messages[-1]
        assert isinstance(second, ev.PlacementDecided) and second.revision == 2
        assert [(a.replica, a.instance_type) for a in second.assignments] == [(0, "t3.large"), (1, "t3.large")]
        assert rig.world.reservations == {}  # dedicated jobs book no node


class FakeDelivery:
    def __init__(self) -> None:
        self.pings = 0

    async def in_progress(self) -> None:
        self.pings += 1


class TestAScaleRequest:
    """:class:`Scales`, the handler of ``job.scale_requested``, on the rig's ledger and decider."""

    def request(self, job_id: str, replicas: int) -> ev.JobScaleRequested:
        return ev.JobScaleRequested(event_id=f"{job_id}:scale:{replicas}", job_id=job_id, replicas=replicas)

    async def test_for_a_job_not_decided_yet_waits_for_its_decision(self, rig: Rig) -> None:
        scales = Scales(rig.ledger, rig.decider.scale, SystemClock(), wait_s=10, ping_s=0.01)
        d = FakeDelivery()
        handled = asyncio.create_task(scales.on_scale(self.request("j1", 2), d))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # let it wait (and ping) a little
        assert not handled.done() and d.pings > 0

        rig.stream.store(foreign("j1", "a"))
        await asyncio.wait_for(handled, 5)

        second = rig.stream.messages[-1]
        assert isinstance(second, ev.PlacementDecided) and (second.revision, second.replicas) == (2, 2)
        await rig.ledger.catch_up(len(rig.stream.messages), timeout=5)
        rig.assert_consistent()

    async def test_for_a_job_that_never_gets_a_decision_gives_up_after_wait_s(self, rig: Rig) -> None:
        scales = Scales(rig.ledger, rig.decider.scale, SystemClock(), wait_s=0.1, ping_s=0.02)
        await asyncio.wait_for(scales.on_scale(self.request("rejected", 2), FakeDelivery()), 5)  # type: ignore[arg-type]
        assert rig.stream.messages == []

    async def test_for_a_released_job_does_nothing(self, rig: Rig) -> None:
        await rig.decide(job("j1"))
        rig.stream.store(released("j1"))
        await rig.ledger.catch_up(2, timeout=1)
        scales = Scales(rig.ledger, rig.decider.scale, SystemClock(), wait_s=10)
        await asyncio.wait_for(scales.on_scale(self.request("j1", 3), FakeDelivery()), 5)  # type: ignore[arg-type]
        assert len(rig.stream.messages) == 2
        rig.assert_consistent()
