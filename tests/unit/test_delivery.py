"""The delivery policy (services.runtime.delivery.outcome) and the ack-subject parser, without a server."""

from __future__ import annotations

import pytest

from services.runtime.delivery import (
    ACK,
    HOLD,
    Outcome,
    Poison,
    delivery_position,
    outcome,
    retry_delay,
    stream_sequence,
)

OOPS = RuntimeError("db down")


@pytest.mark.parametrize(
    ("error", "held", "num_delivered", "max_deliver", "expected"),
    [
        pytest.param(None, False, 1, 5, ACK, id="returned: ack"),
        pytest.param(None, True, 1, 5, HOLD, id="returned after hold: the handler acks later"),
        pytest.param(None, False, 9, 5, ACK, id="returned on a late delivery: still ack"),
        pytest.param(Poison("bad job"), False, 1, 5, Outcome("dead_letter", reason="bad job"), id="poison: at once"),
        pytest.param(Poison("bad"), True, 1, -1, Outcome("dead_letter", reason="bad"), id="poison after hold"),
        pytest.param(OOPS, False, 1, 5, Outcome("nak", delay=0.5), id="first failure: nak 0.5 s"),
        pytest.param(OOPS, True, 2, 5, Outcome("nak", delay=1.0), id="failure after hold: nak all the same"),
        pytest.param(OOPS, False, 4, 5, Outcome("nak", delay=4.0), id="below max_deliver: nak, doubling"),
        pytest.param(
            OOPS,
            False,
            5,
            5,
            Outcome("dead_letter", reason="gave up after 5 deliveries: RuntimeError('db down')"),
            id="max_deliver-th delivery: give up",
        ),
        pytest.param(
            OOPS,
            False,
            7,
            5,
            Outcome("dead_letter", reason="gave up after 7 deliveries: RuntimeError('db down')"),
            id="beyond max_deliver: give up",
        ),
        pytest.param(OOPS, False, 50, -1, Outcome("nak", delay=30.0), id="unbounded: nak forever, capped delay"),
        pytest.param(OOPS, False, 50, 0, Outcome("nak", delay=30.0), id="max_deliver 0 means unbounded"),
    ],
)
def test_outcome(
    error: BaseException | None, held: bool, num_delivered: int, max_deliver: int, expected: Outcome
) -> None:
    assert outcome(error, held=held, num_delivered=num_delivered, max_deliver=max_deliver) == expected


def test_outcome_of_a_returned_handler_needs_no_delivery_count() -> None:
    assert outcome(None) == ACK
    assert outcome(None, held=True) == HOLD


@pytest.mark.parametrize(
    ("num_delivered", "seconds"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (1000, 30.0)],
)
def test_retry_delay_doubles_from_half_a_second_to_thirty(num_delivered: int, seconds: float) -> None:
    assert retry_delay(num_delivered) == seconds


@pytest.mark.parametrize(
    ("reply", "seq"),
    [
        ("$JS.ACK.JOBS.intake.1.42.7.1700000000000000000.0", 42),
        ("$JS.ACK.hub.ACCHASH.JOBS.intake.3.99.12.1700000000000000000.5.token", 99),
    ],
)
def test_stream_sequence_reads_the_ack_subject(reply: str, seq: int) -> None:
    assert stream_sequence(reply) == seq


@pytest.mark.parametrize(
    ("reply", "position"),
    [
        ("$JS.ACK.JOBS.intake.1.42.7.1700000000000000000.0", (42, "intake", 7)),
        ("$JS.ACK.hub.ACCHASH.JOBS.intake.3.99.12.1700000000000000000.5.token", (99, "intake", 12)),
    ],
)
def test_delivery_position_reads_stream_sequence_consumer_and_consumer_sequence(
    reply: str, position: tuple[int, str, int]
) -> None:
    assert delivery_position(reply) == position
