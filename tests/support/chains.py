"""``Publisher.publish_chain`` scenarios, run against one nats-server and against a replicated cluster."""

from __future__ import annotations

from nats.js import JetStreamContext

from schemas import subjects as s
from services.runtime.publisher import Ack, Publisher, WrongLastSequence
from tests.support.events import decided


async def a_stale_chain_is_refused_whole(js: JetStreamContext, atomic: bool) -> None:
    """The publisher's base is one message behind (another instance stored a decision it has
    not seen). Its first message is refused; the second must be refused too: it was decided
    on the same stale ledger, even though the stream's last sequence now equals what it expects."""
    publisher = Publisher(js)
    base = (await publisher.publish_chain([decided("mine-0")], 0, atomic=atomic))[0]
    assert isinstance(base, Ack) and base.seq == 1
    foreign = await Publisher(js).publish_chain([decided("theirs")], 1)
    assert isinstance(foreign[0], Ack) and foreign[0].seq == 2

    results = await publisher.publish_chain([decided("a"), decided("b"), decided("c")], 1, atomic=atomic)  # stale

    assert all(isinstance(r, WrongLastSequence) for r in results), results
    assert (await js.stream_info(s.PLACEMENTS.name)).state.last_seq == 2
