"""The subject registry: no stream may capture a request subject."""

from __future__ import annotations

import itertools

import pytest

from schemas import subjects as s


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("job.submit", "job.submit", True),
        ("job.*", "job.submit", True),
        ("job.>", "job.submit", True),
        ("job.>", "job", False),
        ("node.status.*", "node.status.n1", True),
        ("node.status.*", "node.status.n1.x", False),
        ("node.status.*", "node.status", False),
        (">", "anything.at.all", True),
        ("job.submitted", "job.submit", False),
    ],
)
def test_matches(pattern: str, subject: str, expected: bool) -> None:
    assert s.matches(pattern, subject) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [("job.*", "*.submit", True), ("job.>", "job.a.b", True), ("a.b", "a.c", False), ("a.*", "a.b.c", False)],
)
def test_overlaps(a: str, b: str, expected: bool) -> None:
    assert s.overlaps(a, b) is expected
    assert s.overlaps(b, a) is expected


@pytest.mark.parametrize(("stream", "req_subject"), list(itertools.product(s.STREAMS, s.REQUEST_SUBJECTS)))
def test_no_stream_captures_a_request_subject(stream: s.StreamSpec, req_subject: str) -> None:
    for pattern in (*stream.subjects, *stream.listens_on):
        assert not s.overlaps(pattern, req_subject), f"{stream.name} captures {req_subject} via {pattern}"


def test_streams_list_subjects_explicitly_and_disjointly() -> None:
    all_subjects = [(st.name, p) for st in s.STREAMS for p in st.listens_on]
    for st in s.STREAMS:
        for p in st.subjects:
            assert ">" not in p, f"{st.name} uses a > wildcard"
    for (na, a), (nb, b) in itertools.combinations(all_subjects, 2):
        assert not s.overlaps(a, b), f"{na}:{a} overlaps {nb}:{b}"


def test_every_event_type_has_a_stream() -> None:
    from schemas.events import EVENT_TYPES

    for tag in EVENT_TYPES:
        subject = s.node_status_subject("n1") if tag == s.NODE_STATUS else tag
        subject = s.node_draining_subject("n1") if tag == s.NODE_DRAINING else subject
        subject = s.deadletter_subject("x") if tag == s.DEADLETTER else subject
        subject = s.instance_lost_subject("i-1") if tag == s.CLUSTER_INSTANCE_LOST else subject
        assert any(s.matches(p, subject) for st in s.STREAMS for p in st.subjects), tag


def test_placement_events_are_committed_on_a_subject_no_client_role_watches() -> None:
    for subject in s.PLACEMENTS.subjects:
        commit = s.commit_subject(subject)
        assert commit != subject
        assert any(s.matches(p, commit) for p in s.PLACEMENTS.listens_on)
        assert not s.matches("placement.>", commit) and not s.matches("job.>", commit)
    assert s.commit_subject(s.JOB_SUBMITTED) == s.JOB_SUBMITTED


def test_stored_placement_events_are_republished_on_their_contract_subjects() -> None:
    assert s.PLACEMENTS.republish is not None
    src, _ = s.PLACEMENTS.republish
    for subject in s.PLACEMENTS.subjects:
        assert s.matches(src, subject)
        for captured in s.PLACEMENTS.listens_on:
            assert not s.overlaps(captured, subject)  # no loop: the stream does not capture its republish


def test_stream_sequence_reads_both_ack_subject_forms() -> None:
    from services.runtime.delivery import stream_sequence

    assert stream_sequence("$JS.ACK.JOBS.intake.1.42.7.1700000000000000000.3") == 42
    assert stream_sequence("$JS.ACK._.ACCHASH.JOBS.intake.1.42.7.1700000000000000000.3.rnd") == 42
