"""The nodes' rows and SQL: each node's newest status (written by :mod:`services.metadata.fleet`),
``node.list`` pages and its summary."""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas.events import NodeStatus, encode
from services.metadata.sql_jobs import rows_enc

UPSERT_NODES = """
    INSERT INTO nodes (node_id, state, at, status, cpu_cores, cpu_free, memory_mb, memory_free_mb, gpus, labels)
    SELECT * FROM json_to_recordset({param}::json) AS r(
        node_id text, state text, at timestamptz, status text,
        cpu_cores float8, cpu_free float8, memory_mb bigint, memory_free_mb bigint, gpus bigint, labels jsonb)
    ON CONFLICT (node_id) DO UPDATE SET state = EXCLUDED.state, at = EXCLUDED.at, status = EXCLUDED.status,
        cpu_cores = EXCLUDED.cpu_cores, cpu_free = EXCLUDED.cpu_free, memory_mb = EXCLUDED.memory_mb,
        memory_free_mb = EXCLUDED.memory_free_mb, gpus = EXCLUDED.gpus, labels = EXCLUDED.labels
    WHERE nodes.at < EXCLUDED.at
"""
"""Keep each node's newest status (by its ``at``, whatever the arrival order); ``{param}``: a JSON
array of :class:`NodeRow`. The figures come as typed fields, not parsed out of ``status`` by
PostgreSQL (migration 0009: that was four fifths of its CPU at idle)."""


HISTORY_EVERY_S = 60
"""Node status history keeps at most one row per node per this many seconds (issue #21)."""

INSERT_HISTORY = f"""
    INSERT INTO node_history (node_id, at, state, status)
    SELECT r.node_id, r.at, r.state, r.status
    FROM json_to_recordset({{param}}::json) AS r(node_id text, state text, at timestamptz, status text)
    LEFT JOIN LATERAL (
        SELECT h.at, h.state, h.status FROM node_history h WHERE h.node_id = r.node_id ORDER BY h.at DESC LIMIT 1
    ) last ON true
    WHERE last.at IS NULL
       OR (r.at >= last.at + interval '{HISTORY_EVERY_S} seconds'
           AND (r.state <> last.state
                OR (r.status::jsonb - 'at' - 'event_id') <> (last.status::jsonb - 'at' - 'event_id')))
    ON CONFLICT (node_id, at) DO NOTHING
"""
"""Downsampled history: a node's status (the newest of a flush, :class:`NodeRow`) becomes a row only if
the node has none yet, or its last row is at least :data:`HISTORY_EVERY_S` older and something but the
time changed (state, figures, labels). Bounded by nodes x keep / minute, whatever the status rate. The
flush sends only the nodes its memory says are due (``fleet.HistoryMarks``); this guard settles the
rest (a restart, another instance's rows)."""

FLUSH_NODES = f"""
WITH node AS ({UPSERT_NODES.format(param="$1")}),
     hist AS ({INSERT_HISTORY.format(param="$2")} RETURNING node_id)
SELECT node_id FROM hist
"""
"""One flush of the fleet: ``$1`` every node's newest status (current rows), ``$2`` those due for a
history row; returns the node ids given one."""

DELETE_HISTORY = """
DELETE FROM node_history WHERE ctid = ANY(ARRAY(SELECT ctid FROM node_history WHERE at < $1 ORDER BY at LIMIT $2))
"""
"""One batch of history older than ``$1`` (at most ``$2`` rows)."""


UPSERT_DRAINS = """
    INSERT INTO node_drains (node_id, draining, at, reason)
    SELECT * FROM json_to_recordset({param}::json) AS r(node_id text, draining boolean, at timestamptz, reason text)
    ON CONFLICT (node_id) DO UPDATE SET draining = EXCLUDED.draining, at = EXCLUDED.at, reason = EXCLUDED.reason
    WHERE node_drains.at < EXCLUDED.at
"""
"""Keep each node's newest drain fact; ``{param}``: a JSON array of :class:`DrainRow`."""


class DrainRow(msgspec.Struct, frozen=True):
    node_id: str
    draining: bool
    at: datetime
    reason: str | None


class NodeRow(msgspec.Struct, frozen=True, kw_only=True):
    """A node's newest status (``status``: its JSON) and the figures ``node.list`` filters and sums."""

    node_id: str
    state: str
    at: datetime
    status: msgspec.Raw
    cpu_cores: float
    cpu_free: float
    memory_mb: int
    memory_free_mb: int
    gpus: int
    labels: dict[str, str]

    @classmethod
    def of(cls, status: NodeStatus) -> NodeRow:
        return cls(
            node_id=status.node_id,
            state=status.state,
            at=status.at,
            status=msgspec.Raw(encode(status)),
            cpu_cores=status.cpu_cores,
            cpu_free=status.cpu_free,
            memory_mb=status.memory_mb,
            memory_free_mb=status.memory_free_mb,
            gpus=status.gpus,
            labels=status.labels,
        )


class NodeListRow(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    status: str
    cpu: float
    memory_mb: int
    gpu: int
    replicas: int
    draining: bool


class NodeSummaryRow(msgspec.Struct, frozen=True, array_like=True):
    """The matching nodes of one listed state, summed (free: per node as placement counts it)."""

    listed: str
    nodes: int
    cpu: float
    memory_mb: int
    gpu: int
    free_cpu: float
    free_memory_mb: int
    free_gpu: int
    reserved_cpu: float
    reserved_memory_mb: int
    reserved_gpu: int
    replicas: int


_LISTED_STATE = (
    "CASE WHEN n.state = 'active' AND n.at < $1 THEN 'inactive'"
    " WHEN n.state = 'active' AND COALESCE(d.draining, false) THEN 'draining' ELSE n.state END"
)
"""A node's listed state: ``inactive`` when it says active but its last status is older than ``$1``;
``draining`` when it says active but is drained (``node_drains``, joined as ``d``); else as it says."""
_NODES = "nodes n LEFT JOIN node_drains d ON d.node_id = n.node_id"
_NODE_FILTER = f"($2::text IS NULL OR {_LISTED_STATE} = $2) AND ($3::jsonb IS NULL OR n.labels @> $3::jsonb)"


def _reserved(where: str) -> str:
    """Reservations of unreleased jobs summed per node, for the nodes ``where`` selects."""
    return f"""
    SELECT r.node_id, sum(r.cpu) AS cpu, sum(r.memory_mb) AS memory_mb, sum(r.gpu) AS gpu, count(*) AS replicas
    FROM jobs j CROSS JOIN LATERAL json_to_recordset(j.reservations::json)
                                   AS r(node_id text, cpu float8, memory_mb bigint, gpu integer)
    WHERE NOT j.released AND j.reservations IS NOT NULL AND {where}
    GROUP BY r.node_id"""


NODE_PAGE = f"""
WITH page AS (
    SELECT n.node_id, n.status, COALESCE(d.draining, false) AS draining FROM {_NODES}
    WHERE n.node_id > $4 AND {_NODE_FILTER}
    ORDER BY n.node_id LIMIT $5
)
SELECT p.node_id, p.status, COALESCE(r.cpu, 0)::float8 AS cpu, COALESCE(r.memory_mb, 0)::bigint AS memory_mb,
       COALESCE(r.gpu, 0)::bigint AS gpu, COALESCE(r.replicas, 0)::bigint AS replicas, p.draining
FROM page p
LEFT JOIN ({_reserved("r.node_id IN (SELECT node_id FROM page)")}) r USING (node_id)
ORDER BY p.node_id
"""
NODE_SUMMARY = f"""
WITH n AS (
    SELECT n.node_id, {_LISTED_STATE} AS listed, n.cpu_cores, n.cpu_free, n.memory_mb, n.memory_free_mb, n.gpus
    FROM {_NODES} WHERE {_NODE_FILTER}
)
SELECT n.listed, count(*) AS nodes,
       COALESCE(sum(n.cpu_cores), 0)::float8, COALESCE(sum(n.memory_mb), 0)::bigint, COALESCE(sum(n.gpus), 0)::bigint,
       COALESCE(sum(GREATEST(0, LEAST(n.cpu_cores - COALESCE(r.cpu, 0), n.cpu_free))), 0)::float8,
       COALESCE(sum(GREATEST(0, LEAST(n.memory_mb - COALESCE(r.memory_mb, 0), n.memory_free_mb))), 0)::bigint,
       COALESCE(sum(GREATEST(0, n.gpus - COALESCE(r.gpu, 0))), 0)::bigint,
       COALESCE(sum(r.cpu), 0)::float8, COALESCE(sum(r.memory_mb), 0)::bigint, COALESCE(sum(r.gpu), 0)::bigint,
       COALESCE(sum(r.replicas), 0)::bigint
FROM n LEFT JOIN ({_reserved("TRUE")}) r USING (node_id)
GROUP BY n.listed
"""


def label_param(labels: dict[str, str] | None) -> str | None:
    return rows_enc.encode(labels).decode() if labels else None
