"""Credentials and their refusals, pure: the nats CLI's contexts, whom ``natsched`` connects as and
with which inboxes, and the one-line messages a service and the CLI give for a refused password or
a denied permission (as nats-py reports them: lower-cased)."""

from __future__ import annotations

import json
from pathlib import Path

import nats.errors
import pytest

from schemas import subjects as s
from services.cli.client import EXIT_USAGE, CliError, Context, Target, context_path, denial, load_context
from services.cli.main import default_role, parser
from services.runtime.app import canonical_subject, permission_violation, refusal
from services.runtime.streams import consumer_config, same_consumer


class TestContexts:
    def test_the_nats_cli_context_folder_honours_xdg_config_home(self, tmp_path: Path) -> None:
        assert context_path("prod", {"XDG_CONFIG_HOME": "/x"}) == Path("/x/nats/context/prod.json")
        assert context_path("prod", {"HOME": "/home/op"}) == Path("/home/op/.config/nats/context/prod.json")

    def test_a_context_gives_url_user_and_password(self, tmp_path: Path) -> None:
        folder = tmp_path / "nats" / "context"
        folder.mkdir(parents=True)
        body = {"description": "", "url": "nats://prod:4222", "user": "manager", "password": "pw", "token": ""}
        (folder / "prod.json").write_text(json.dumps(body))
        ctx = load_context("prod", {"XDG_CONFIG_HOME": str(tmp_path)})
        assert ctx == Context(url="nats://prod:4222", user="manager", password="pw")

    def test_a_missing_or_bad_context_is_named(self, tmp_path: Path) -> None:
        env = {"XDG_CONFIG_HOME": str(tmp_path)}
        with pytest.raises(CliError, match=r"no nats context 'nope'.*nope\.json") as e:
            load_context("nope", env)
        assert e.value.exit_code == EXIT_USAGE
        (tmp_path / "nats" / "context").mkdir(parents=True)
        (tmp_path / "nats" / "context" / "bad.json").write_text("{")
        with pytest.raises(CliError, match="not a valid context file"):
            load_context("bad", env)
        with pytest.raises(CliError, match="bad context name"):
            context_path("../etc/passwd", env)

    def test_flags_win_over_the_context_which_wins_over_the_environment(self) -> None:
        ctx = Context(url="nats://ctx:1", user="admin", password="ctx-pw")
        env = {"NATS_URL": "nats://env:1", "NATS_USER": "alice", "NATS_PASSWORD": "env-pw"}
        assert Target.resolve(None, None, None, default_role="manager", env=env, context=ctx) == Target(
            "nats://ctx:1", "admin", "ctx-pw"
        )
        t = Target.resolve("nats://flag:1", "monitor", None, default_role="manager", env=env, context=ctx)
        assert t == Target("nats://flag:1", "monitor", "dev-monitor")  # a flag's user: not the context's password
        t = Target.resolve(None, None, "flag-pw", default_role="manager", env=env, context=ctx)
        assert t == Target("nats://ctx:1", "admin", "flag-pw")

    def test_a_context_without_user_leaves_credentials_to_the_environment(self) -> None:
        env = {"NATS_USER": "alice", "NATS_PASSWORD": "env-pw"}
        t = Target.resolve(None, None, None, default_role="manager", env=env, context=Context(url="nats://c:1"))
        assert t == Target("nats://c:1", "alice", "env-pw")

    def test_the_context_flag_parses_before_and_after_the_command(self) -> None:
        assert parser().parse_args(["--context", "prod", "usage"]).context == "prod"
        assert parser().parse_args(["usage", "--context", "prod"]).context == "prod"


class TestInboxes:
    @pytest.mark.parametrize(
        ("user", "prefix"),
        [
            ("monitor", s.MONITOR_INBOX_PREFIX),
            ("services", s.SERVICES_INBOX_PREFIX),
            ("manager", s.DEFAULT_INBOX_PREFIX),
        ],
    )
    def test_a_role_with_inboxes_of_its_own_uses_them(self, user: str, prefix: str) -> None:
        assert Target("nats://x:1", user, "pw").inbox_prefix == prefix

    def test_quota_set_defaults_to_the_operators_user(self) -> None:
        assert default_role(parser().parse_args(["quota", "set", "acme", "--cpu", "8"])) == "admin"
        assert default_role(parser().parse_args(["quota", "acme"])) == "manager"
        assert default_role(parser().parse_args(["ping"])) == "monitor"


class TestRefusals:
    def test_a_wrong_password(self) -> None:
        r = refusal(nats.errors.Error("nats: 'authorization violation'"), "services")
        assert r is not None
        assert r.message == 'NATS refused user "services": authorization violation (check NATS_USER / NATS_PASSWORD)'
        r = refusal(nats.errors.AuthorizationError(), None)
        assert r is not None and r.message.startswith("NATS refused a connection without NATS_USER")

    def test_a_denied_permission_names_the_subject_and_the_role_needed(self) -> None:
        e = nats.errors.Error('nats: permissions violation for publish to "$js.api.stream.update.jobs"')
        r = refusal(e, "manager")
        assert r is not None and r.message == (
            'NATS user "manager" may not publish to $JS.API.STREAM.UPDATE.JOBS:'
            ' the services connect as role "services" (set NATS_USER=services and NATS_PASSWORD)'
        )
        r = refusal(e, None)
        assert r is not None and r.message.startswith("NATS without NATS_USER (the server's no_auth_user) may not")
        r = refusal(e, "services")
        assert r is not None and r.message.endswith("(check the services permissions in nats.conf)")

    def test_anything_else_is_not_a_refusal(self) -> None:
        assert refusal(nats.errors.TimeoutError(), "services") is None
        assert refusal(ConnectionRefusedError("connect call failed"), "services") is None

    def test_subjects_are_shown_as_written(self) -> None:
        assert canonical_subject("$js.api.consumer.msg.next.placements.cluster-manager") == (
            "$JS.API.CONSUMER.MSG.NEXT.PLACEMENTS.cluster-manager"
        )
        assert canonical_subject("_inbox_services.abc123.*") == "_INBOX_services.>"
        assert canonical_subject("_inbox.abc123.*") == "_INBOX.>"
        assert canonical_subject("job.get") == "job.get"  # the scheduler's subjects are lower-case already
        e = nats.errors.Error('nats: permissions violation for subscription to "_inbox_monitor.x.*"')
        assert permission_violation(e) == ("subscribe to", "_INBOX_monitor.>")

    def test_the_cli_says_how_to_connect_as_someone_else(self) -> None:
        e = nats.errors.Error('nats: permissions violation for publish to "quota.set"')
        r = denial(e, Target("nats://x:1", "manager", "pw"))
        assert r is not None and r.message.startswith('NATS user "manager" may not publish to quota.set (')
        assert "--context" in r.message
        assert denial(nats.errors.TimeoutError(), Target("nats://x:1", "manager", "pw")) is None


class TestProvisionedConsumer:
    def test_the_server_config_of_an_unchanged_durable_is_the_same(self) -> None:
        want = consumer_config(s.CLUSTER_MANAGER)
        have = consumer_config(s.CLUSTER_MANAGER)
        assert same_consumer(want, have)
        have.description = "changed by hand"
        assert not same_consumer(want, have)
        have = consumer_config(s.CLUSTER_MANAGER)
        have.filter_subjects = [s.PLACEMENT_DECIDED]
        assert not same_consumer(want, have)
