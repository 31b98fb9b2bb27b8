"""PostgreSQL retention's pure parts: the cut-offs, the 404's words, the ended-jobs predicate matching
its partial index, and node statuses kept out of ``events`` (issue #21)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

from nats.aio.msg import Msg

from schemas import events as ev
from schemas.states import TERMINAL_STATES
from services.metadata import sql_jobs
from services.metadata.groups import Batch, prepare
from services.metadata.migrations import MIGRATIONS_DIR
from services.metadata.retention import cutoffs, forgotten_message, span
from services.metadata.views import Cached, ViewCache
from services.runtime.config import RetentionConf
from services.runtime.delivery import Delivery
from tests.support.events import lifecycle, node_status

T0 = datetime(2025, 6, 1, tzinfo=UTC)


def test_cutoffs() -> None:
    conf = RetentionConf(jobs_keep_s=30 * 86400.0, node_history_keep_s=3600.0)
    assert cutoffs(conf, T0) == (T0 - timedelta(days=30), T0 - timedelta(hours=1))


def test_span_in_words() -> None:
    assert span(30 * 86400.0) == "30 days"
    assert span(86400.0) == "1 day"
    assert span(1.5 * 86400) == "1.5 days"
    assert span(7200.0) == "2 hours"
    assert span(60.0) == "1 minute"
    assert span(2.0) == "2 seconds"


def test_the_404_says_a_job_may_have_been_forgotten() -> None:
    assert (
        forgotten_message("j1", 30 * 86400.0)
        == "unknown job j1, or one that ended more than 30 days ago and was forgotten"
    )
    assert forgotten_message("j1", None) == "unknown job j1"


def test_the_ended_predicate_is_the_partial_index_s() -> None:
    """The planner uses ``jobs_ended`` only if the query's predicate is the index's, literally."""
    migration = (MIGRATIONS_DIR / "0008_retention.sql").read_text()
    index = re.search(r"CREATE INDEX jobs_ended ON jobs \(updated_at\)\s+WHERE (.+?);", migration, re.S)
    assert index is not None
    assert f"({index.group(1).strip()})" == sql_jobs.ENDED
    assert set(re.findall(r"'(\w+)'", sql_jobs.ENDED)) == TERMINAL_STATES


def _items(events: list[ev.Event]) -> list[tuple[ev.Event, Delivery]]:
    out = []
    for n, e in enumerate(events, 1):
        msg = Msg(_client=None, subject=ev.subject_of(e), reply=f"$JS.ACK.S.metadata.1.{n}.{n}.0.0")  # type: ignore[arg-type]
        msg.data = ev.encode(e)
        out.append((e, Delivery(msg)))
    return out


async def test_node_statuses_are_not_event_rows_nor_projected() -> None:
    """Statuses are state (issue #23): services.metadata.fleet writes them; one that still comes
    through the NODES durable is skipped, and a drain fact is kept."""
    statuses: list[ev.Event] = [node_status("n1", T0 + timedelta(seconds=i)) for i in range(5)]
    drain = ev.NodeDraining(event_id="d1", node_id="n1", at=T0, draining=True)
    events: list[ev.Event] = [*statuses, drain, *lifecycle("j1", T0)]
    batch = Batch(items=_items(events), done=asyncio.get_running_loop().create_future())
    g = await prepare([batch], lambda job_id: None)
    assert {r[0] for r in g.events} == {"d1", *(e.event_id for e in lifecycle("j1", T0))}  # no status
    assert [(r.node_id, r.draining) for r in g.drains] == [("n1", True)]


def test_the_view_cache_forgets_deleted_jobs() -> None:
    cache = ViewCache(10)
    entry = Cached(view=None, version=1)  # type: ignore[arg-type]
    cache.put("a", entry)
    cache.put("b", entry)
    cache.discard(["a", "zzz"])
    assert cache.get("a") is None and cache.get("b") is entry and len(cache) == 1
