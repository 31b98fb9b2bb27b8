"""The tenant relay's pure parts: what it reads of an event, where a copy goes, which durables to declare."""

from __future__ import annotations

import msgspec
import pytest

from schemas import events as ev
from schemas import subjects as s
from services.gateway.relay import RelayHead, copy_subject, decoder, is_transient, new_tenants, stored
from services.runtime.publisher import PublishError


def released(tenant: str = s.DEFAULT_TENANT) -> ev.PlacementReleased:
    return ev.PlacementReleased(event_id="j1:placement.released", job_id="j1", reason="cancelled", tenant=tenant)


def test_the_head_of_a_whole_event_is_its_id_job_and_tenant() -> None:
    head = decoder.decode(ev.encode(released("acme")))
    assert head == RelayHead(event_id="j1:placement.released", job_id="j1", tenant="acme")


def test_an_event_written_before_tenants_is_the_default_tenants() -> None:
    assert decoder.decode(b'{"type":"placement.failed","event_id":"e","job_id":"j","reason":"r"}').tenant == "default"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"job_id":"j","tenant":"acme"}',  # no event_id: a copy could not be deduplicated
        b'{"event_id":"","tenant":"acme"}',
        b'{"event_id":"e","tenant":"acme.x"}',  # not one subject token
        b'{"event_id":"e","tenant":"*"}',
        b'{"event_id":"e","tenant":"ACME"}',
        b"not json",
    ],
)
def test_an_event_the_relay_cannot_copy_safely_does_not_decode(payload: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decoder.decode(payload)


def test_a_tenants_copy_goes_to_its_relay_subject_and_the_default_tenants_nowhere() -> None:
    head = RelayHead(event_id="e", tenant="acme")
    assert copy_subject(head, s.PLACEMENT_DECIDED) == "sched.relay.tenant.acme.placement.decided"
    assert s.TENANT_PLACEMENTS.listens_on == ("sched.relay.tenant.*.placement.*",)
    assert copy_subject(RelayHead(event_id="e"), s.PLACEMENT_DECIDED) is None


def test_durables_are_declared_once_per_new_tenant_never_for_default() -> None:
    heads = [RelayHead(event_id=str(i), tenant=t) for i, t in enumerate(["globex", "acme", "default", "acme"])]
    assert new_tenants(heads, set()) == ["acme", "globex"]
    assert new_tenants(heads, {"acme"}) == ["globex"]
    assert new_tenants(heads, {"acme", "globex"}) == []


def test_a_copy_is_stored_only_when_jetstream_says_so() -> None:
    assert stored(b'{"stream":"TENANT_PLACEMENTS","seq":7,"duplicate":true}').duplicate is True
    with pytest.raises(PublishError, match="no stream captures"):
        stored(b"")  # the no-responders status
    with pytest.raises(PublishError) as refused:
        stored(b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}')
    assert refused.value.err_code == 10077 and is_transient(refused.value)
    with pytest.raises(PublishError, match="undecodable"):
        stored(b"<html>")
