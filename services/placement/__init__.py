"""placement: decides where a job's replicas run."""
