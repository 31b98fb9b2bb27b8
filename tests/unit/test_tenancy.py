from __future__ import annotations

import json

import pytest
from nats.aio.msg import Msg

from schemas import subjects as s
from services.runtime.micro import RequestError
from services.runtime.tenancy import from_tenant_import, tenant_of


def msg(subject: str, headers: dict[str, str] | None = None) -> Msg:
    return Msg(None, subject=subject, data=b"{}", headers=headers)  # type: ignore[arg-type]


def test_a_plain_subject_is_the_default_tenant_whatever_its_header_says() -> None:
    forged = {s.REQUEST_INFO_HEADER: json.dumps({"acc": "ACME"})}
    assert tenant_of(msg(s.JOB_SUBMIT, forged)) == s.DEFAULT_TENANT
    assert not from_tenant_import(msg(s.JOB_SUBMIT, forged))


def test_the_tenant_subject_reads_the_account_from_the_servers_header_lower_cased() -> None:
    info = {s.REQUEST_INFO_HEADER: json.dumps({"acc": "ACME", "rtt": 1234})}
    assert tenant_of(msg(s.tenant_request_subject(s.JOB_GET), info)) == "acme"


@pytest.mark.parametrize("headers", [None, {}, {s.REQUEST_INFO_HEADER: "{not json"}, {s.REQUEST_INFO_HEADER: "{}"}])
def test_a_tenant_subject_without_a_readable_header_is_refused(headers: dict[str, str] | None) -> None:
    with pytest.raises(RequestError) as e:
        tenant_of(msg(s.tenant_request_subject(s.JOB_GET), headers))
    assert e.value.code == 403
