"""The CLI's pure parts: building the JobSpec, choosing credentials, reading error replies, tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import jobspec, render
from services.cli.client import EXIT_ERROR_REPLY, Target, error_of
from services.cli.main import parser


def submit_args(*argv: str) -> dict[str, object]:
    return jobspec.build(parser().parse_args(["submit", *argv]))


class TestJobSpec:
    def test_flags_build_the_nested_body(self) -> None:
        body = submit_args(
            "--name", "a", "--replicas", "2", "--cpu", "1.5", "--label", "zone=eu-1a", "--label", "gpu=no",
            "--node", "n1", "--spread", "--image", "img:1", "--arg=-v",
        )  # fmt: skip
        assert body == {
            "name": "a",
            "replicas": 2,
            "resources": {"cpu": 1.5},
            "constraints": {"labels": {"zone": "eu-1a", "gpu": "no"}, "nodes": ["n1"], "spread": True},
            "workload": {"image": "img:1", "args": ["-v"]},
        }

    def test_flags_win_over_the_file_and_keep_its_other_fields(self, tmp_path: Path) -> None:
        f = tmp_path / "job.json"
        f.write_text(json.dumps({"name": "file", "resources": {"cpu": 2, "memory_mb": 64}, "legacy": 1}))
        body = submit_args("-f", str(f), "--cpu", "4")
        assert body == {"name": "file", "resources": {"cpu": 4.0, "memory_mb": 64}, "legacy": 1}

    @pytest.mark.parametrize(
        ("content", "suffix", "message"),
        [("[1]", ".json", "must hold an object"), ("{", ".json", "not valid JSON"), ("x =", ".toml", "not valid TOML")],
    )
    def test_a_bad_file_is_named(self, tmp_path: Path, content: str, suffix: str, message: str) -> None:
        f = tmp_path / f"job{suffix}"
        f.write_text(content)
        with pytest.raises(jobspec.SpecError, match=message):
            submit_args("-f", str(f))

    def test_a_label_without_value_is_refused(self) -> None:
        with pytest.raises(jobspec.SpecError, match="KEY=VALUE"):
            submit_args("--name", "a", "--label", "zone")


class TestTarget:
    def test_defaults_to_the_development_user_of_the_command(self) -> None:
        t = Target.resolve(None, None, None, default_role="node", env={})
        assert (t.servers, t.user, t.password) == ("nats://127.0.0.1:4222", "node", "dev-node")

    def test_environment_then_flags(self) -> None:
        env = {"NATS_URL": "nats://h:1", "NATS_USER": "alice", "NATS_PASSWORD": "secret"}
        assert Target.resolve(None, None, None, default_role="manager", env=env) == Target(
            "nats://h:1", "alice", "secret"
        )
        # a user given as a flag does not take the environment's password (it belongs to NATS_USER)
        t = Target.resolve("nats://x:2", "monitor", None, default_role="manager", env=env)
        assert t == Target("nats://x:2", "monitor", "dev-monitor")

    def test_a_role_password_from_its_variable(self) -> None:
        t = Target.resolve(None, None, None, default_role="manager", env={"NATS_MANAGER_PASSWORD": "prod-pw"})
        assert t.password == "prod-pw"


class TestErrorReplies:
    def test_success_is_not_an_error(self) -> None:
        assert error_of(None, b"{}") is None
        assert error_of({"Other": "x"}, b"{}") is None

    def test_message_field_and_job_id_from_the_body(self) -> None:
        headers = {"Nats-Service-Error": "bad", "Nats-Service-Error-Code": "504"}
        body = b'{"error": {"code": 504, "message": "no decision within 5 s", "job_id": "j1"}}'
        err = error_of(headers, body)
        assert err is not None and err.exit_code == EXIT_ERROR_REPLY
        assert err.message == "error 504: no decision within 5 s (job_id: j1)"

    def test_headers_alone_when_the_body_is_not_json(self) -> None:
        err = error_of({"Nats-Service-Error": "boom", "Nats-Service-Error-Code": "500"}, b"nope")
        assert err is not None and err.message == "error 500: boom"


class TestTables:
    def test_columns_align_ignoring_colour_codes(self) -> None:
        style = render.Style(colour=True)
        text = render.table(["A", "N"], [[style.state("failed"), "10"], ["ok", "2"]], style)
        plain = [render._ANSI.sub("", line) for line in text.splitlines()]
        assert plain == ["A        N", "failed  10", "ok       2"]
        assert "\033[31mfailed\033[0m" in text

    def test_no_colour_means_no_escape_codes(self) -> None:
        text = render.nodes_table(
            [{"node_id": "n1", "state": "active", "active": False, "cpu_cores": 8.0}], render.Style(False)
        )
        assert "\033" not in text and "inactive" in text and "-/8" in text

    def test_later_pages_have_no_header(self) -> None:
        style = render.Style(False)
        assert render.table(["A"], [["x"]], style, header=False) == "x\n"
        assert render.table(["A"], [], style, header=False) == ""

    def test_the_summary_in_one_line(self) -> None:
        line = render.nodes_summary(
            {
                "total": 3,
                "states": {"active": 2, "inactive": 0, "draining": 1, "down": 0},
                "capacity": {"cpu": 16.0, "memory_mb": 32768, "gpu": 0},
                "free": {"cpu": 7.5, "memory_mb": 1024, "gpu": 0},
                "reserved": {"cpu": 1.0, "memory_mb": 512, "gpu": 0, "replicas": 2},
            }
        )
        assert line == (
            "3 node(s): 2 active, 0 inactive, 1 draining, 0 down; active capacity cpu 16 (free 7.5),"
            " memory_mb 32768 (free 1024), gpu 0 (free 0); 2 replica(s) reserved"
        )

    @pytest.mark.parametrize(("value", "text"), [(6.0, "6"), (1.5, "1.5"), (0.333333, "0.33"), (None, "-"), (7, "7")])
    def test_numbers(self, value: object, text: str) -> None:
        assert render.num(value) == text
