-- Retention (issue #21): PostgreSQL bounded by windows, not by history (services/metadata/retention.py,
-- [retention] in the TOML, docs/OPERATIONS.md "Retention").

-- Node status history, downsampled: at most one row per node per minute (sql_nodes.HISTORY_EVERY_S),
-- and only when the node's state or figures changed since its previous row; deleted after
-- node_history_keep_s. Until now every node.status was a row of `events` (about 170 million a day
-- for 10,000 nodes at 5 s); statuses are no longer recorded there. Current state stays in `nodes`.
CREATE TABLE node_history (
    node_id text        NOT NULL,
    at      timestamptz NOT NULL,
    state   text        NOT NULL,
    status  text        NOT NULL,   -- JSON of the node.status event
    PRIMARY KEY (node_id, at)       -- also the "last row of this node" lookup, walked backwards
);
CREATE INDEX node_history_by_at ON node_history (at);

-- Node facts left in `events` (the statuses recorded before this migration, drain facts since):
-- retention deletes those older than node_history_keep_s, oldest first, through this index.
CREATE INDEX events_node_facts ON events (at) WHERE job_id IS NULL;

-- Jobs ended (terminal state, schemas.states.TERMINAL_STATES) or never named by their job.submitted
-- (state null: an orphan of events that arrived for a job forgotten since), by the time of their last
-- event: retention finds the ones older than jobs_keep_s at the head of this index, whatever the
-- number of live jobs. The predicate is retention.ENDED's, literally (a partial index is used only then).
CREATE INDEX jobs_ended ON jobs (updated_at)
    WHERE state IS NULL OR state IN ('cancelled', 'expired', 'failed', 'rejected', 'succeeded');
