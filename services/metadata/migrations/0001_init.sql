-- metadata projection: every event, and the state derived from them.
-- Applied once, in a transaction, by services.metadata.migrations (recorded in schema_migrations).
-- JSON payloads are stored as text: they are validated by msgspec before they get here, and
-- PostgreSQL's json validation on every insert cost ~30% of the projection's database time.

-- Append-only log of every projected event, keyed by event_id (node.status without one:
-- "node.status:<node_id>:<at>"). A redelivered event hits the key and changes nothing.
CREATE TABLE events (
    event_key   text        PRIMARY KEY,
    type        text        NOT NULL,
    job_id      text,
    node_id     text,
    at          timestamptz NOT NULL,
    stream      text        NOT NULL,
    stream_seq  bigint      NOT NULL,
    body        text        NOT NULL,   -- the event's JSON exactly as published (validated on decode)
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_by_job ON events (job_id, at, stream_seq) WHERE job_id IS NOT NULL;

-- One row per job. `view` is services.metadata.domain.JobView (marks, spec, placement,
-- instances) as JSON; state/submitted_at/updated_at/released are derived from it and
-- kept as columns for filtering. `seq` orders job.list (newest first) and never changes,
-- so keyset pagination is stable while jobs are being added.
CREATE TABLE jobs (
    job_id       text        PRIMARY KEY,
    seq          bigint      GENERATED ALWAYS AS IDENTITY,
    state        text,
    reason       text,
    submitted_at timestamptz,
    updated_at   timestamptz,
    released     boolean     NOT NULL DEFAULT false,
    view         text        -- JSON of domain.JobView
);
CREATE UNIQUE INDEX jobs_by_seq ON jobs (seq);
CREATE INDEX jobs_by_state ON jobs (state, seq);

-- Replicas placed on shared nodes (from placement.decided); a reservation counts while its
-- job is not released. Resources are per replica (null: take them from the job's spec).
CREATE TABLE reservations (
    job_id    text    NOT NULL,
    replica   integer NOT NULL,
    node_id   text    NOT NULL,
    cpu       double precision,
    memory_mb bigint,
    gpu       integer,
    PRIMARY KEY (job_id, replica)
);
CREATE INDEX reservations_by_node ON reservations (node_id);

-- Last status of each node (the newest by its `at`, whatever the arrival order).
CREATE TABLE nodes (
    node_id text        PRIMARY KEY,
    state   text        NOT NULL,
    at      timestamptz NOT NULL,
    status  text        NOT NULL      -- JSON of the node.status event
);
