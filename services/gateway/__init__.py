"""gateway: the request-reply front door (``job.submit``, ``placement.request``)."""
