"""intake: applies policy to submitted jobs (``job.accepted`` / ``job.rejected``)."""
