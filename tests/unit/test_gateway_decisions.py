"""placement.request answers with the job's first decision, never a later revision (§8.1)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.msg import Msg

from schemas import subjects as s
from services.gateway.handlers import Decisions


def event(job_id: str, **fields: Any) -> Msg:
    body = {"type": s.PLACEMENT_DECIDED, "event_id": f"{job_id}:x", "job_id": job_id, **fields}
    return Msg(_client=None, subject=s.PLACEMENT_DECIDED, data=msgspec.json.encode(body))  # type: ignore[arg-type]


async def test_a_later_revision_is_not_the_answer_revision_1_is() -> None:
    decisions = Decisions()
    fut = await decisions.expect("j1")
    await decisions.on_event(event("j1", revision=2, changes=[]))
    assert not fut.done()
    await decisions.on_event(event("j1", revision=1))
    assert msgspec.json.decode(await asyncio.wait_for(fut, 1))["revision"] == 1


async def test_a_decision_written_before_revisions_is_the_answer() -> None:
    decisions = Decisions()
    fut = await decisions.expect("j2")
    await decisions.on_event(event("j2"))
    assert msgspec.json.decode(await asyncio.wait_for(fut, 1))["job_id"] == "j2"


def test_the_look_up_asks_job_events_with_a_body_metadata_accepts() -> None:
    """The look-up's request body decodes as ``job.events``' request (unknown fields are a 400 there)."""
    from schemas.replies import JobEventsRequest
    from services.gateway.handlers import _enc_ref, _JobRef

    body = _enc_ref.encode(_JobRef("j1"))
    assert msgspec.json.decode(body, type=JobEventsRequest).job_id == "j1"
