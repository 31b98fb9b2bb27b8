"""What the page is told at start (``/config.json``): where NATS is, as whom, and every subject it uses.

Pure but for :func:`from_environment`. The subjects come from ``schemas/subjects.py`` (the micro
control subjects from nats-py), so the JavaScript never spells one; the timeouts from the typed
config, so the page marks a node inactive and lost when placement does.
"""

from __future__ import annotations

import msgspec
from nats.micro.service import ServiceVerb, control_subject

from schemas import subjects as s
from schemas.states import LIVE_ORDER, STATES, TERMINAL_STATES
from services.runtime import credentials
from services.runtime.config import Timeouts, load_config


class Subjects(msgspec.Struct, kw_only=True, frozen=True):
    job_get: str
    job_list: str
    job_events: str
    node_list: str
    node_status: str
    """``node.status.*``: the last token is the node id."""
    node_draining: str
    placement_decided: str
    feed: tuple[str, ...]
    """Shown as they happen: placements, failures, degraded jobs, releases."""
    job_changes: tuple[str, ...]
    """Every event that may change a job's state: the job list is refreshed after them."""
    srv_stats: str
    srv_info: str
    error_header: str
    error_code_header: str
    """ADR-32 error replies: the message and the HTTP-like code (``404`` for an unknown job)."""


class PageConfig(msgspec.Struct, kw_only=True, frozen=True):
    servers: tuple[str, ...]
    """Websocket URLs of nats-server (``ws://127.0.0.1:9222``)."""
    user: str
    password: str
    inbox_prefix: str
    """The page's reply inboxes (nats.ws ``inboxPrefix``): the only ones the console user may read."""
    subjects: Subjects
    states: tuple[str, ...]
    live_states: tuple[str, ...]
    terminal_states: tuple[str, ...]
    node_ttl_s: float
    node_lost_s: float


def page_config(servers: tuple[str, ...], user: str, password: str, timeouts: Timeouts) -> PageConfig:
    feed = (s.PLACEMENT_DECIDED, s.PLACEMENT_FAILED, s.PLACEMENT_DEGRADED, s.PLACEMENT_RELEASED)
    changes = (*s.JOBS.subjects, *s.PLACEMENTS.subjects, *s.CLUSTERS.subjects)
    return PageConfig(
        servers=servers,
        user=user,
        password=password,
        inbox_prefix=s.CONSOLE_INBOX_PREFIX,
        subjects=Subjects(
            job_get=s.JOB_GET,
            job_list=s.JOB_LIST,
            job_events=s.JOB_EVENTS,
            node_list=s.NODE_LIST,
            node_status=s.NODE_STATUS_ALL,
            node_draining=s.NODE_DRAINING_ALL,
            placement_decided=s.PLACEMENT_DECIDED,
            feed=feed,
            job_changes=tuple(subject for subject in changes if subject not in feed),
            srv_stats=control_subject(ServiceVerb.STATS),
            srv_info=control_subject(ServiceVerb.INFO),
            error_header=s.ERROR_HEADER,
            error_code_header=s.ERROR_CODE_HEADER,
        ),
        states=STATES,
        live_states=LIVE_ORDER,
        terminal_states=tuple(state for state in STATES if state in TERMINAL_STATES),
        node_ttl_s=timeouts.node_ttl_s,
        node_lost_s=timeouts.lost_after_s,
    )


def encode(config: PageConfig) -> bytes:
    return msgspec.json.encode(config)


def from_environment(servers: tuple[str, ...]) -> bytes:
    """``config.json`` for these websocket URLs: the console user's password (``NATS_CONSOLE_PASSWORD``, else
    the development default) and the timeouts of the TOML config (``SCHEDULER_CONFIG``, else the defaults)."""
    return encode(page_config(servers, "console", credentials.password("console"), load_config().timeouts))
