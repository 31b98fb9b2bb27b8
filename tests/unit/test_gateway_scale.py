"""job.scale at the gateway: the count, the states that refuse it, the idempotent event id,
and the handler against a fake view and publisher (no server)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from schemas.states import LIVE_ORDER, TERMINAL_STATES
from services.gateway.lifecycle import JobStates, Lifecycle
from services.gateway.scale import SCALE_REQUESTED, Scaler, check_count, refusal, scale_event_id
from services.runtime.micro import RequestError
from services.runtime.publisher import Ack


class FakePublisher:
    def __init__(self) -> None:
        self.stored: dict[str, ev.Event] = {}

    async def publish(self, event: ev.Event) -> Ack:
        dup = event.event_id in self.stored
        self.stored.setdefault(event.event_id, event)
        return Ack(stream="JOBS", seq=0, duplicate=dup)


class CurrentView(JobStates):
    async def sync(self, js: Any, timeout: float) -> None:
        return None


def scaler(states: dict[str, str], max_replicas: int = 10) -> tuple[Scaler, FakePublisher]:
    view = CurrentView()
    view.states.update(states)
    pub = FakePublisher()
    return Scaler(Lifecycle(None, pub, view, 1.0), max_replicas), pub  # type: ignore[arg-type]


def request(body: dict[str, object], msg_id: str | None = None) -> Msg:
    headers = {s.MSG_ID_HEADER: msg_id} if msg_id else None
    return Msg(None, subject=s.JOB_SCALE, data=msgspec.json.encode(body), headers=headers)  # type: ignore[arg-type]


@given(st.integers(min_value=1, max_value=1000), st.integers(min_value=1, max_value=1000))
def test_a_count_above_the_configured_limit_is_refused_naming_it(replicas: int, limit: int) -> None:
    if replicas <= limit:
        check_count(replicas, limit)
        return
    with pytest.raises(RequestError, match=f"limit of {limit}") as e:
        check_count(replicas, limit)
    assert (e.value.code, e.value.field) == (400, "replicas")


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES | {"cancelling"}))
def test_an_ended_or_cancelling_job_is_409(state: str) -> None:
    err = refusal("j1", state)
    assert err is not None and err.code == 409 and err.job_id == "j1"


@pytest.mark.parametrize("state", [st for st in LIVE_ORDER if st != "cancelling"])
def test_a_live_job_may_be_resized(state: str) -> None:
    assert refusal("j1", state) is None


def test_the_event_id_follows_the_idempotency_key() -> None:
    assert scale_event_id("j1", "k") == scale_event_id("j1", "k")
    assert scale_event_id("j1", "k") != scale_event_id("j1", "k2")
    assert scale_event_id("j1", "k") != scale_event_id("j2", "k")
    assert scale_event_id("j1", None) != scale_event_id("j1", None)
    assert scale_event_id("j1", "k").startswith("j1:job.scale_requested:")


class TestHandler:
    async def test_stores_the_request_and_answers_once_stored(self) -> None:
        sc, pub = scaler({"j1": "submitted"})
        reply = msgspec.json.decode(await sc.scale(request({"job_id": "j1", "replicas": 4})))
        assert reply == {"job_id": "j1", "replicas": 4, "state": SCALE_REQUESTED}
        (event,) = pub.stored.values()
        assert isinstance(event, ev.JobScaleRequested) and event.replicas == 4 and event.idempotency_key is None

    async def test_the_header_wins_over_request_id(self) -> None:
        sc, pub = scaler({"j1": "submitted"})
        await sc.scale(request({"job_id": "j1", "replicas": 2, "request_id": "body"}, msg_id="hdr"))
        await sc.scale(request({"job_id": "j1", "replicas": 2, "request_id": "other"}, msg_id="hdr"))
        (event,) = pub.stored.values()
        assert isinstance(event, ev.JobScaleRequested) and event.idempotency_key == "hdr"

    async def test_unknown_job_is_404_and_stores_nothing(self) -> None:
        sc, pub = scaler({})
        with pytest.raises(RequestError) as e:
            await sc.scale(request({"job_id": "nope", "replicas": 2}))
        assert e.value.code == 404 and not pub.stored

    async def test_ended_job_is_409_and_stores_nothing(self) -> None:
        sc, pub = scaler({"j1": "cancelled"})
        with pytest.raises(RequestError) as e:
            await sc.scale(request({"job_id": "j1", "replicas": 2}))
        assert e.value.code == 409 and not pub.stored

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"job_id": "j1", "replicas": 0}, "replicas"),
            ({"job_id": "j1", "replicas": -1}, "replicas"),
            ({"job_id": "j1", "replicas": 1.5}, "replicas"),
            ({"job_id": "j1", "replicas": "2"}, "replicas"),
            ({"job_id": "j1"}, None),
            ({"job_id": "j1", "replicas": 2, "extra": 1}, "extra"),
        ],
    )
    async def test_bad_bodies_fail_to_decode(self, body: dict[str, object], field: str | None) -> None:
        sc, pub = scaler({"j1": "submitted"})
        with pytest.raises(msgspec.ValidationError) as e:
            await sc.scale(request(body))
        if field:
            assert field in str(e.value)
        assert not pub.stored

    async def test_above_the_configured_limit_is_400_before_any_lookup(self) -> None:
        sc, _ = scaler({}, max_replicas=3)
        with pytest.raises(RequestError) as e:
            await sc.scale(request({"job_id": "j1", "replicas": 4}))
        assert (e.value.code, e.value.field) == (400, "replicas") and "3" in e.value.message
