"""``Publisher.publish_chain`` against a real nats-server, pipelined and as an atomic batch: a
chain is stored in order right after the sequence it expects, and nothing of it from its first
refused message on."""

from __future__ import annotations

import msgspec
import pytest
from nats.aio.client import Client

from schemas import subjects as s
from services.runtime.publisher import Ack, Publisher, WrongLastSequence
from services.runtime.streams import ensure_streams
from tests.support.chains import a_stale_chain_is_refused_whole
from tests.support.events import decided

pytestmark = pytest.mark.integration
modes = pytest.mark.parametrize("atomic", [False, True], ids=["pipelined", "atomic"])


@modes
async def test_a_chain_is_stored_in_order_on_an_up_to_date_base(nc: Client, atomic: bool) -> None:
    js = nc.jetstream()
    await ensure_streams(js, [s.PLACEMENTS])
    results = await Publisher(js).publish_chain([decided(f"j{i}") for i in range(3)], 0, atomic=atomic)
    assert [r.seq for r in results if isinstance(r, Ack)] == [1, 2, 3]


@modes
async def test_nothing_after_a_refused_message_is_stored(nc: Client, atomic: bool) -> None:
    js = nc.jetstream()
    await ensure_streams(js, [s.PLACEMENTS])
    await a_stale_chain_is_refused_whole(js, atomic)


async def test_a_chain_holding_a_stored_decision(nc: Client) -> None:
    """A job decided before (a crash before the ack, or another instance): pipelined, the decisions
    before it are stored and it is answered as a duplicate; as an atomic batch, the server refuses
    the whole batch for its duplicate message id. Either way the placement service redoes it on
    the caught-up ledger, where it is decided already."""
    js = nc.jetstream()
    await ensure_streams(js, [s.PLACEMENTS])
    publisher = Publisher(js)
    assert isinstance((await publisher.publish_chain([decided("x")], 0))[0], Ack)

    y, x = await publisher.publish_chain([decided("y"), decided("x")], 1)
    assert isinstance(y, Ack) and y.seq == 2 and isinstance(x, Ack) and x.duplicate

    results = await publisher.publish_chain([decided("z"), decided("x")], 2, atomic=True)
    assert all(isinstance(r, WrongLastSequence) for r in results), results
    assert (await js.stream_info(s.PLACEMENTS.name)).state.last_seq == 2


async def test_a_stream_declared_before_atomic_batches_is_updated_to_allow_them(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js, [msgspec.structs.replace(s.PLACEMENTS, atomic=False)])  # as an older version left it
    await ensure_streams(js, [s.PLACEMENTS])
    results = await Publisher(js).publish_chain([decided("a"), decided("b")], 0, atomic=True)
    assert [r.seq for r in results if isinstance(r, Ack)] == [1, 2]
