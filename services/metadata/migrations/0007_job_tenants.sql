-- Tenants (§8.4): each job's tenant (the account it was submitted from), projected from the events
-- that name it (job.submitted, job.accepted, the placement events). Jobs projected before tenants
-- existed were all submitted inside the scheduler's account: `default`. No table rewrite (a constant
-- default), and no backfill from `events` (a scan of all of them): upgrade metadata before the
-- gateway, which is the first to write another tenant.
ALTER TABLE jobs ADD COLUMN tenant text NOT NULL DEFAULT 'default';
-- job.list filtered by tenant (a tenant's own listing, an operator's `tenant` filter) walks this index
-- backwards from the cursor's seq, as the unfiltered listing walks jobs_by_seq: a page costs its own
-- rows whatever the other tenants hold. With a state filter too, the planner picks this one or
-- jobs_by_state, whichever is more selective.
CREATE INDEX jobs_by_tenant ON jobs (tenant, seq);
