"""The console's config.json (pure) and its static server (stdlib, a local port; no NATS)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import msgspec
import pytest

from schemas import subjects as s
from schemas.states import STATES, TERMINAL_STATES
from services.console import STATIC_DIR, ConsoleServer
from services.console.config import encode, page_config
from services.runtime.config import Timeouts


def test_the_page_is_given_every_subject_it_uses_from_the_registry() -> None:
    c = page_config(("ws://127.0.0.1:9222",), "console", "pw", Timeouts())
    n = c.subjects
    assert (n.job_get, n.job_list, n.job_events, n.node_list) == (s.JOB_GET, s.JOB_LIST, s.JOB_EVENTS, s.NODE_LIST)
    assert (n.node_status, n.node_draining) == (s.NODE_STATUS_ALL, s.NODE_DRAINING_ALL)
    assert set(n.feed) == {s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.PLACEMENT_DEGRADED, s.PLACEMENT_RELEASED}
    assert n.placement_decided in n.feed
    assert not set(n.feed) & set(n.job_changes)
    assert set(n.feed) | set(n.job_changes) == {*s.JOBS.subjects, *s.PLACEMENTS.subjects, *s.CLUSTERS.subjects}
    assert not set(n.feed) & set(s.REQUEST_SUBJECTS)
    assert (n.srv_stats, n.error_code_header) == ("$SRV.STATS", s.ERROR_CODE_HEADER)


@pytest.mark.parametrize(("ttl", "lost", "shown"), [(15.0, 30.0, 30.0), (10.0, 5.0, 10.0)])
def test_nodes_are_inactive_and_lost_when_placement_says_so(ttl: float, lost: float, shown: float) -> None:
    c = page_config((), "console", "pw", Timeouts(node_ttl_s=ttl, node_lost_s=lost))
    assert (c.node_ttl_s, c.node_lost_s) == (ttl, shown)  # node_lost_s is raised to the TTL, as placement does


def test_the_states_are_those_of_the_state_machine() -> None:
    c = page_config((), "console", "pw", Timeouts())
    assert c.states == STATES
    assert set(c.terminal_states) == TERMINAL_STATES
    assert not set(c.live_states) & TERMINAL_STATES


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers["Content-Type"], r.read()


def test_the_static_server_serves_the_page_its_modules_and_the_config(tmp_path: Path) -> None:
    config = encode(page_config(("ws://127.0.0.1:1",), "console", "pw", Timeouts()))
    with ConsoleServer(config, log_dir=tmp_path) as server:
        status, kind, body = _get(server.url)
        assert (status, kind) == (200, "text/html") and b'src="js/main.js"' in body
        status, kind, body = _get(server.url + "config.json")
        assert (status, kind) == (200, "application/json")
        assert msgspec.json.decode(body)["servers"] == ["ws://127.0.0.1:1"]
        for module in ("js/main.js", "vendor/nats-core.js"):
            status, kind, _ = _get(server.url + module)
            assert (status, kind) == (200, "text/javascript")  # ES modules need a JavaScript type
    assert "GET /config.json" in (tmp_path / "console.log").read_text()


def test_the_vendored_client_is_the_pinned_version_with_its_licences() -> None:
    pinned = json.loads((STATIC_DIR.parent / "vendor" / "package.json").read_text())["dependencies"]
    version = (STATIC_DIR / "vendor" / "nats-core.VERSION").read_text()
    assert version.startswith(f"@nats-io/nats-core {pinned['@nats-io/nats-core']},")
    licences = (STATIC_DIR / "vendor" / "nats-core.LICENSE").read_text()
    assert "==== @nats-io/nats-core ====" in licences and "Apache License" in licences
    assert "wsconnect as wsconnect" in (STATIC_DIR / "vendor" / "nats-core.js").read_text()
