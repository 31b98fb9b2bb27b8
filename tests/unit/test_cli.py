"""The CLI's pure parts: building the JobSpec, choosing credentials, reading error replies, tables."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from services.cli import jobspec, render
from services.cli.client import EXIT_ERROR_REPLY, Target, error_of
from services.cli.main import parser


def submit_args(*argv: str) -> dict[str, object]:
    return jobspec.build(parser().parse_args(["submit", *argv]))


class TestConnectionOptions:
    @pytest.mark.parametrize(
        "argv",
        [["--server", "nats://a:1", "ping"], ["ping", "--server", "nats://a:1"], ["-s", "nats://a:1", "get", "j"]],
    )
    def test_before_or_after_the_command(self, argv: list[str]) -> None:
        assert parser().parse_args(argv).server == "nats://a:1"

    def test_left_out_means_the_defaults(self) -> None:
        args = parser().parse_args(["ping"])
        assert (args.server, args.user, args.password, args.timeout, args.json, args.no_color) == (
            None,
            None,
            None,
            None,
            False,
            False,
        )


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

    def test_placement_policies_from_flags(self) -> None:
        body = submit_args("--name", "e", "--strategy", "nearest", "--near", "52.5,13.4,500", "--spread-by", "zone")
        assert body["strategy"] == "nearest"
        assert body["constraints"] == {"spread_by": "zone", "near": {"lat": 52.5, "lon": 13.4, "max_km": 500.0}}
        assert submit_args("--name", "x", "--preemption", "never")["preemption"] == "never"
        with pytest.raises(jobspec.SpecError, match="LAT,LON,MAX_KM"):
            submit_args("--name", "x", "--near", "52.5,13.4")

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


class TestLivingFleet:
    """Revisions, degraded jobs and drained nodes, readably (§8.1-8.2)."""

    def test_a_drained_node_is_marked(self) -> None:
        text = render.nodes_table(
            [
                {"node_id": "n1", "state": "active", "active": True, "draining": True, "cpu_cores": 8.0},
                {"node_id": "n2", "state": "active", "active": True, "draining": False, "cpu_cores": 8.0},
            ],
            render.Style(False),
        )
        n1, n2 = text.splitlines()[1:]
        assert n1.split()[:3] == ["n1", "draining", "yes"] and n2.split()[:3] == ["n2", "active", "-"]

    def test_a_new_revision_shows_its_changes(self) -> None:
        event = {
            "type": "placement.decided",
            "job_id": "j1",
            "revision": 2,
            "assignments": [{"replica": 0, "node_id": "n1"}, {"replica": 1, "node_id": "n5"}],
            "changes": [{"replica": 1, "from": "n2", "to": "n5", "reason": "drain"}],
        }
        assert render.summary(event) == "revision 2: replica 1 n2 -> n5 (drain); 2 placed"
        assert render.summary({**event, "revision": 1}) == "2 replica(s) on n1, n5"

    def test_degraded_names_the_missing_replicas_and_why(self) -> None:
        event = {"type": "placement.degraded", "revision": 3, "missing": [1, 2], "reason": "0/4 nodes available"}
        assert render.summary(event) == "revision 3: replica(s) 1, 2 fit nowhere: 0/4 nodes available"
        lost = {"replica": 1, "from": "n2", "reason": "node_lost"}  # "to" omitted: null
        assert render.changes_text([lost]) == "replica 1 n2 -> none (node_lost)"

    def test_get_shows_revision_and_missing(self) -> None:
        job = {
            "job_id": "j1",
            "state": "degraded",
            "spec": {"replicas": 2},
            "placement": {
                "assignments": [{"replica": 0, "node_id": "n1"}],
                "candidates": [],
                "revision": 2,
                "replicas": 2,
                "missing": [1],
                "degraded_reason": "0/3 nodes available",
                "revisions": [
                    {"revision": 1, "at": "2026-01-01T00:00:00Z", "changes": []},
                    {"revision": 2, "at": "2026-01-01T00:01:00Z", "changes": [lost_change()]},
                ],
            },
        }
        text = render.job_detail(job, render.Style(False))
        assert "revision 2: 1 of 2 replica(s) placed, missing replica(s) 1 (0/3 nodes available)" in text
        assert "replica 1 n2 -> none (node_lost)" in text

    def test_drain_and_undrain_parse(self) -> None:
        a = parser().parse_args(["drain", "n7", "--reason", "kernel upgrade"])
        assert (a.command, a.node_id, a.reason) == ("drain", "n7", "kernel upgrade")
        assert parser().parse_args(["undrain", "n7"]).node_id == "n7"


def lost_change() -> dict[str, object]:
    return {"replica": 1, "from": "n2", "reason": "node_lost"}


class TestScaleAndPlan:
    def test_scale_takes_a_job_and_a_count_and_plan_the_submit_flags(self) -> None:
        a = parser().parse_args(["scale", "j1", "4", "--msg-id", "k"])
        assert (a.job_id, a.replicas, a.msg_id) == ("j1", 4, "k")
        p = parser().parse_args(["plan", "--replicas", "3", "--cpu", "2"])
        assert jobspec.build(p)["replicas"] == 3 and jobspec.build(p)["resources"]["cpu"] == 2

    def test_a_decision_reads_as_tables_and_a_failure_as_its_explanation(self) -> None:
        from services.cli.plan import plan_text

        style = render.Style(False)
        decision = {
            "decision": {
                "assignments": [{"replica": 0, "node_id": "node-7"}, {"replica": 1, "node_id": "node-3"}],
                "candidates": [{"node_id": "node-7", "cpu_free": 7.5, "memory_free_mb": 30000}],
            },
            "preemptions": [{"job_id": "low", "replica": 0, "node_id": "node-3"}],
        }
        text = plan_text(decision, style)
        assert "would place" in text and "node-7" in text and "node-3" in text
        assert "7.5" in text and "would preempt" in text and "low" in text
        failure = {"failure": {"reason": "0/5 nodes available: 5 insufficient cpu", "excluded": {"cpu": 5, "gpu": 0}}}
        text = plan_text(failure, style)
        assert "insufficient cpu" in text and "cpu 5" in text and "gpu" not in text

    def test_a_resized_job_shows_its_wanted_count_and_the_request_its_count(self) -> None:
        job = {
            "job_id": "j1",
            "state": "placed",
            "spec": {"replicas": 2, "resources": {"cpu": 1, "memory_mb": 512}},
            "placement": {"assignments": [{"replica": 0, "node_id": "n1"}], "revision": 3, "replicas": 1},
        }
        text = render.job_detail(job, render.Style(False))
        assert "resources  1 x (cpu 1," in text and "revision 3: 1 of 1 replica(s) placed" in text
        assert render.jobs_table([job], render.Style(False), header=False).split()[4] == "1"
        assert render.summary({"type": "job.scale_requested", "job_id": "j1", "replicas": 4}) == "to 4 replica(s)"

    def test_a_dedicated_plan_names_instance_types_in_its_headers(self) -> None:
        from services.cli.plan import plan_text

        reply = {
            "decision": {
                "assignments": [{"replica": 0, "instance_type": "t3.medium"}],
                "candidates": [{"instance_type": "t3.medium", "vcpu": 2, "memory_mb": 4096, "price_hourly": 0.04}],
            }
        }
        text = plan_text(reply, render.Style(False))
        assert "INSTANCE TYPE" in text and "VCPU" in text and "CPU FREE" not in text and "0.04" in text


class TestPlacementPolicies:
    """Preemption and geography as ``get``, ``watch`` and ``plan`` show them (§8.3, §8.5)."""

    CHANGE: ClassVar[dict[str, Any]] = {"replica": 0, "from": "n3", "to": None, "reason": "preempted", "by": "urgent"}
    PREEMPTOR: ClassVar[dict[str, Any]] = {
        "type": "placement.decided",
        "job_id": "urgent",
        "at": "2026-01-01T00:00:05Z",
        "revision": 1,
        "assignments": [{"replica": 0, "node_id": "n3"}],
        "preempted": [
            {"job_id": "low", "replica": 0, "node_id": "n3"},
            {"job_id": "low2", "replica": 1, "node_id": "n3"},
        ],
    }
    VICTIM: ClassVar[dict[str, Any]] = {
        "type": "placement.decided",
        "job_id": "low",
        "revision": 2,
        "assignments": [],
        "replicas": 1,
        "changes": [CHANGE],
    }

    def test_watch_shows_the_preempting_decision_and_the_victims_change(self) -> None:
        style = render.Style(False)
        assert render.summary(self.PREEMPTOR) == (
            "1 replica(s) on n3; preempted low replica 0 on n3, low2 replica 1 on n3"
        )
        assert render.summary(self.VICTIM) == "revision 2: replica 0 n3 -> none (preempted by urgent); 0 placed"
        line = render.event_line(self.PREEMPTOR, style)
        assert line.startswith("2026-01-01 00:00:05  placement.decided") and "urgent  1 replica(s) on n3;" in line
        moved = {**self.VICTIM, "changes": [{**self.CHANGE, "to": "n8"}], "revision": 3}
        assert render.summary(moved) == "revision 3: replica 0 n3 -> n8 (preempted by urgent); 0 placed"

    def test_watch_prints_each_event_once_through_its_summary(self) -> None:
        from services.cli.live import _show
        from services.cli.output import Io

        out = io.StringIO()
        shown = Io(out, io.StringIO(), as_json=False, colour=False)
        seen: set[str] = set()
        event = {**self.PREEMPTOR, "event_id": "urgent:placement.decided"}
        assert _show(event, shown, seen) == 1 and _show(event, shown, seen) == 0
        lines = out.getvalue().splitlines()
        assert len(lines) == 1 and "preempted low replica 0 on n3" in lines[0]

    def test_get_shows_preempted_by_and_the_preempted_list(self) -> None:
        victim = {
            "job_id": "low",
            "state": "degraded",
            "spec": {"replicas": 1},
            "placement": {
                "assignments": [],
                "revision": 2,
                "replicas": 1,
                "missing": [0],
                "degraded_reason": "preempted by urgent: 0/3 nodes available",
                "revisions": [
                    {"revision": 1, "at": "2026-01-01T00:00:00Z", "changes": []},
                    {"revision": 2, "at": "2026-01-01T00:00:05Z", "changes": self.VICTIM["changes"]},
                ],
            },
        }
        text = render.job_detail(victim, render.Style(False))
        assert "replica 0 n3 -> none (preempted by urgent)" in text
        assert "missing replica(s) 0 (preempted by urgent: 0/3 nodes available)" in text
        preemptor = {
            "job_id": "urgent",
            "state": "placed",
            "spec": {"replicas": 1},
            "placement": {"assignments": [{"replica": 0, "node_id": "n3"}], "preempted": self.PREEMPTOR["preempted"]},
        }
        text = render.job_detail(preemptor, render.Style(False))
        table = text.split("took room from (preempted)\n")[1].splitlines()
        assert table[0].split() == ["JOB", "REPLICA", "NODE"]
        assert table[1].split() == ["low", "0", "n3"] and table[2].split() == ["low2", "1", "n3"]
        assert "took room from" not in render.job_detail({**preemptor, "placement": {}}, render.Style(False))

    def test_plan_shows_distance_km_only_when_near_was_given(self) -> None:
        from services.cli.plan import plan_text

        near = {
            "decision": {
                "assignments": [{"replica": 0, "node_id": "n1"}],
                "candidates": [
                    {"node_id": "n1", "cpu_free": 4.0, "memory_free_mb": 8192, "distance_km": 12.345},
                    {"node_id": "n2", "cpu_free": 8.0, "memory_free_mb": 8192, "distance_km": 480.0},
                ],
            }
        }
        text = plan_text(near, render.Style(False))
        head, n1, n2 = text.split("candidates, best first\n")[1].splitlines()[:3]
        assert head.split()[-2:] == ["DISTANCE", "KM"]
        assert n1.split() == ["n1", "4", "8192", "-", "12.3"] and n2.split() == ["n2", "8", "8192", "-", "480.0"]
        plain = {"decision": {"assignments": [], "candidates": [{"node_id": "n1", "cpu_free": 4.0}]}}
        assert "DISTANCE" not in plan_text(plain, render.Style(False))


class TestWatchHistory:
    async def test_the_history_follows_job_events_pages_to_the_end(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """job.events answers in pages: ``watch --history`` shows every one, not only the first."""
        import argparse
        import io

        from services.cli import commands, live
        from services.cli.output import Io

        asked: list[dict[str, object]] = []

        async def fake_request(nc: object, subject: str, body: dict[str, object], *, timeout: float) -> object:
            asked.append(dict(body))
            if "after" not in body:
                return {"events": [{"type": "job.submitted", "event_id": "e1", "job_id": "j"}], "next": "c1"}
            return {"events": [{"type": "job.accepted", "event_id": "e2", "job_id": "j"}], "next": None}

        class FakeSub:
            async def unsubscribe(self) -> None:
                return None

        class FakeNc:
            async def subscribe(self, subject: str, cb: object) -> FakeSub:
                return FakeSub()

            async def flush(self) -> None:
                return None

        monkeypatch.setattr(commands, "request", fake_request)
        a = argparse.Namespace(job_id="j", history=True, nodes=False, count=2, until_done=False, timeout=1.0)
        out = io.StringIO()
        await live.cmd_watch(a, FakeNc(), Io(out, io.StringIO(), as_json=True, colour=False))  # type: ignore[arg-type]
        assert [b.get("after") for b in asked] == [None, "c1"]
        assert "e1" in out.getvalue() and "e2" in out.getvalue()
