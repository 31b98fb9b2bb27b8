"""metadata: projects every event into PostgreSQL and answers job.get, job.list, job.events, node.list."""
