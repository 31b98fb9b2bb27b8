"""Which limits ``[retention]`` gives each stream (``services.runtime.streams.retained``, pure)."""

from __future__ import annotations

import pytest
from nats.js import api as js_api

from schemas import subjects as s
from services.runtime.config import RetentionConf
from services.runtime.streams import RETAINED, retained, stream_config

EVENT_STREAMS = (s.JOBS, s.PLACEMENTS, s.CLUSTERS, s.TENANT_PLACEMENTS, s.DEADLETTERS)


@pytest.mark.parametrize("spec", EVENT_STREAMS, ids=lambda spec: spec.name)
def test_event_streams_get_age_size_and_discard_old(spec: s.StreamSpec) -> None:
    r = RetentionConf(events_max_age_s=3600.0 * 48, stream_max_bytes=5000)
    got = retained(spec, r)
    assert (got.max_age_s, got.max_bytes, got.discard_new) == (r.events_max_age_s, 5000, False)
    cfg = stream_config(got)
    assert cfg.max_age == r.events_max_age_s and cfg.max_bytes == 5000
    assert cfg.discard == js_api.DiscardPolicy.OLD


def test_nodes_gets_the_age_only() -> None:
    got = retained(s.NODES, RetentionConf(events_max_age_s=600.0, stream_max_bytes=5000))
    assert got.max_age_s == 600.0 and got.max_bytes == -1 and not got.discard_new
    assert got.max_msgs_per_subject == 1
    assert stream_config(got).discard == js_api.DiscardPolicy.OLD


def test_every_stream_but_nodes_is_retained() -> None:
    assert {spec.name for spec in s.STREAMS} - {s.NODES.name} == RETAINED


def test_no_retention_leaves_the_spec() -> None:
    for spec in s.STREAMS:
        assert retained(spec, None) is spec


def test_the_duplicate_window_is_clamped_to_max_age() -> None:
    got = retained(s.JOBS, RetentionConf(events_max_age_s=60.0))
    assert got.duplicate_window_s == 60.0
    assert retained(s.JOBS, RetentionConf()).duplicate_window_s == s.JOBS.duplicate_window_s
    assert retained(s.NODES, RetentionConf(events_max_age_s=10.0)).duplicate_window_s == 10.0


def test_unlimited_size() -> None:
    got = retained(s.JOBS, RetentionConf(stream_max_bytes=-1))
    assert stream_config(got).max_bytes == -1
