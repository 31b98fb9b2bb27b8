-- The job record is folded from the job's rows in `events` when it is asked for (job.get, job.list);
-- the projection keeps the merged views in memory only. So the jobs row holds just what listing and
-- filtering need, and every write of it is small: the 1.7 kB view was rewritten each time a job got
-- an event, which cost more PostgreSQL time than recording the events themselves.
ALTER TABLE jobs DROP COLUMN view;
