-- node.list pages and filters, and its summary, at any fleet size (issue 24): the figures of each
-- node's last status as columns, computed by PostgreSQL when the row is written, so that the
-- summary sums 100,000 rows without parsing their JSON and the label filter reads jsonb.
-- Generated columns: the projection's upsert of `status` keeps them current without a change.
ALTER TABLE nodes
    ADD COLUMN cpu_cores      double precision GENERATED ALWAYS AS ((status::jsonb ->> 'cpu_cores')::float8) STORED,
    ADD COLUMN cpu_free       double precision GENERATED ALWAYS AS ((status::jsonb ->> 'cpu_free')::float8) STORED,
    ADD COLUMN memory_mb      bigint GENERATED ALWAYS AS ((status::jsonb ->> 'memory_mb')::bigint) STORED,
    ADD COLUMN memory_free_mb bigint GENERATED ALWAYS AS ((status::jsonb ->> 'memory_free_mb')::bigint) STORED,
    ADD COLUMN gpus           bigint GENERATED ALWAYS AS (COALESCE((status::jsonb ->> 'gpus')::bigint, 0)) STORED,
    ADD COLUMN labels         jsonb GENERATED ALWAYS AS (COALESCE(status::jsonb -> 'labels', '{}'::jsonb)) STORED;
