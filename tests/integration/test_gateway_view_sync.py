"""The gateway's job state view against a real nats-server: ``sync`` returns only once every
event stored before it is folded (read-your-writes for ``job.cancel``/``job.complete``), and
asks each stream's ordered consumer where it is instead of reading the last message of every
folded subject (issue #23: eight ``STREAM.MSG.GET`` per request before). Events of subjects the view
does not fold come between, as they do in JOBS: a filtered consumer's stream sequence moves past them."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import events as ev
from schemas import subjects as s
from services.gateway.lifecycle import JobStates
from services.runtime.streams import ensure_streams
from tests.support.events import small_submitted
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_sync_sees_every_event_stored_before_it_with_one_small_request_per_stream(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    states = JobStates()
    await states.start(js)
    msg_gets: list[str] = []

    async def count(msg: Msg) -> None:
        msg_gets.append(msg.subject)

    watch = await nc.subscribe("$JS.API.STREAM.MSG.GET.>", cb=count)
    try:
        for i in range(30):
            e = small_submitted(f"sync-{i}")
            await js.publish(s.JOB_SUBMITTED, ev.encode(e), headers={s.MSG_ID_HEADER: e.event_id})
            for subject, other in (  # events the view does not fold, in each of its streams
                (s.JOB_ACCEPTED, ev.JobAccepted(event_id=f"a-{i}", job_id=e.job_id, spec=e.spec)),
                (s.CLUSTER_PROVISIONING, ev.ClusterProvisioning(event_id=f"p-{i}", job_id=e.job_id)),
            ):
                await js.publish(subject, ev.encode(other))
            if i % 3 == 2:
                end = ev.JobCompleted(event_id=f"c-{i}", job_id=e.job_id, outcome="succeeded")
                await js.publish(s.JOB_COMPLETED, ev.encode(end))
            await states.sync(js, timeout=10)
            assert e.job_id in states.states  # the event stored just before is folded
            if i % 3 == 2:
                assert states.states[e.job_id] == "succeeded"
        await nc.flush()
        assert len(msg_gets) < 30  # the fallback only while a consumer had something pending
    finally:
        await watch.unsubscribe()
        await states.stop()


async def test_sync_is_not_fooled_by_a_consumer_that_moved_past_events_it_does_not_deliver(nc: Client) -> None:
    """A filtered consumer with nothing to deliver moves its stream sequence to the stream's end once
    it looks again (at its idle heartbeat): a view waiting to fold up to *that* sequence would wait
    for ever (every ``job.cancel`` answered 503 under load). The view counts what was delivered."""
    js = nc.jetstream()
    await ensure_streams(js)
    states = JobStates()
    await states.start(js)
    try:
        e = small_submitted("skipped-ahead")
        await js.publish(s.JOB_SUBMITTED, ev.encode(e), headers={s.MSG_ID_HEADER: e.event_id})
        for i in range(3):
            await js.publish(s.CLUSTER_PROVISIONING, ev.encode(ev.ClusterProvisioning(event_id=f"p{i}", job_id="x")))
        last = (await js.stream_info(s.CLUSTERS.name)).state.last_seq

        async def moved_past() -> bool:
            info = await states._subs[s.CLUSTERS.name].consumer_info()
            return bool(info.delivered and (info.delivered.stream_seq or 0) >= last)

        await eventually(moved_past, timeout=30, what="the CLUSTERS consumer moved past what it skipped")
        await states.sync(js, timeout=5)
        assert e.job_id in states.states
    finally:
        await states.stop()
