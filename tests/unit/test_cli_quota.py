"""``natsched quota`` and ``natsched usage``, pure: which request each command line makes, and how
the replies read."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from schemas import replies
from schemas import subjects as s
from services.cli import render
from services.cli.client import EXIT_USAGE, CliError
from services.cli.main import parser
from services.cli.quota import QuotaCall, quota_call, tenant_request

PLAIN = render.Style(False)


def call(*argv: str) -> QuotaCall:
    return quota_call(parser().parse_args(["quota", *argv]))


def body(c: QuotaCall) -> Any:
    return msgspec.json.decode(msgspec.json.encode(c.body))


class TestQuotaCommandLine:
    def test_quota_alone_asks_for_the_askers_own(self) -> None:
        c = call()
        assert c.subject == s.QUOTA_GET and body(c) == {"tenant": None}
        c = call("acme")
        assert c.subject == s.QUOTA_GET and body(c) == {"tenant": "acme"}

    def test_quota_set_sends_every_limit_given_and_the_rest_unlimited(self) -> None:
        c = call("set", "acme", "--cpu", "8", "--memory-mb", "16384", "--jobs", "3", "--cpu-hours", "100.5")
        assert c.subject == s.QUOTA_SET
        assert isinstance(c.body, replies.QuotaSetRequest)
        assert c.body.quota == replies.Quota(cpu=8.0, memory_mb=16384, jobs=3, cpu_hours=100.5)
        assert (c.body.quota.gpu, c.body.quota.instances) == (None, None)
        c = call("set", "globex")
        assert isinstance(c.body, replies.QuotaSetRequest) and c.body.quota == replies.Quota()

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (("acme", "--cpu", "8"), "--cpu: only with `natsched quota set TENANT`"),
            (("set",), "one tenant"),
            (("set", "a", "b"), "one tenant"),
            (("a", "b"), "usage: natsched quota"),
            (("set", "ACME"), "bad quota request"),
            (("set", "acme", "--cpu", "-1"), r"bad quota request.*cpu"),
        ],
    )
    def test_bad_command_lines_are_refused_before_anything_is_sent(self, argv: tuple[str, ...], message: str) -> None:
        with pytest.raises(CliError, match=message) as e:
            call(*argv)
        assert e.value.exit_code == EXIT_USAGE

    def test_usage_asks_for_a_tenant_or_the_askers_own(self) -> None:
        assert parser().parse_args(["usage", "acme"]).tenant == "acme"
        assert tenant_request(None) == replies.QuotaRequest()
        assert tenant_request("acme") == replies.QuotaRequest(tenant="acme")


class TestQuotaText:
    def test_a_quota_lists_each_limit_and_where_it_comes_from(self) -> None:
        text = render.quota_text({"tenant": "acme", "quota": {"cpu": 8.0, "jobs": 3}, "source": "runtime"}, PLAIN)
        lines = text.splitlines()
        assert lines[0] == "tenant acme  (quota from quota.set)"
        assert lines[1].split() == ["LIMIT", "QUOTA"]
        assert lines[2].split() == ["cpu", "8"]
        assert lines[3].split() == ["memory_mb", "unlimited"]
        assert lines[5].split() == ["jobs", "3"]
        assert "none set: unlimited" in render.quota_text({"tenant": "x", "quota": {}, "source": "none"}, PLAIN)

    def test_usage_reads_used_of_quota(self) -> None:
        reply = {
            "tenant": "acme",
            "usage": {"cpu": 6.0, "memory_mb": 2048, "gpu": 0, "jobs": 2, "instances": 0, "cpu_hours": 12.25},
            "quota": {"cpu": 8.0, "jobs": 2},
            "at": "2026-11-30T04:00:00.123Z",
        }
        lines = render.usage_text(reply, PLAIN).splitlines()
        assert lines[0] == "tenant acme  (at 2026-11-30 04:00:00)"
        rows = {line.split("  ")[0]: line.split("  ", 1)[1].strip() for line in lines[2:]}
        assert rows["cpu"] == "6 of 8"
        assert rows["memory_mb"] == "2048 (unlimited)"
        assert rows["jobs"] == "2 of 2"
        assert rows["cpu_hours (30 d)"] == "12.25 (unlimited)"

    def test_a_full_quota_is_red_on_a_terminal(self) -> None:
        reply = {"tenant": "a", "usage": {"jobs": 2}, "quota": {"jobs": 2, "cpu": 8}, "at": None}
        text = render.usage_text(reply, render.Style(True))
        assert f"\033[{render.RED}m2 of 2\033[0m" in text
        assert f"\033[{render.RED}m0 of 8" not in text
