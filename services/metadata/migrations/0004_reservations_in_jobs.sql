-- A job's reservations (replicas placed on shared nodes) live in its row, as a JSON array of
-- {replica, node_id, cpu, memory_mb, gpu}: written with the row (one write per job and batch instead
-- of a row per replica with two indexes), and summed per node by node.list over unreleased jobs.
ALTER TABLE jobs ADD COLUMN reservations text;
UPDATE jobs j SET reservations = r.list
FROM (SELECT job_id, json_agg(json_build_object('replica', replica, 'node_id', node_id, 'cpu', cpu,
                                                'memory_mb', memory_mb, 'gpu', gpu) ORDER BY replica)::text AS list
      FROM reservations GROUP BY job_id) r
WHERE j.job_id = r.job_id;
DROP TABLE reservations;
