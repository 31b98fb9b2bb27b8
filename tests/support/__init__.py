"""Helpers shared by the tests, the benchmarks (``tests.bench``) and the chaos runs (``tests.chaos``).

A test module imports shared code from here, never from another test module; the pytest
fixtures themselves stay in ``tests/conftest.py``, built on these helpers.

- ``servers``: the repo root, NATS credentials, waiting for services, a test database.
- ``system``: the whole system as real processes, for a benchmark or a chaos run.
- ``procs``: whether a service exists, and a process's CPU time and peak memory.
- ``waiting``: waiting on a condition with a timeout.
- ``events``: job specs, job events and node statuses, built and published.
- ``api``: request/reply to the services (``job.*``, submit, paging) and request bodies.
- ``config``: the services' configuration files and environment for a test.
- ``ec2``: what the EC2 API (moto) holds for a job.
- ``cli``: capturing the CLI's output.
- ``chains``: ``Publisher.publish_chain`` scenarios run on one server and on a cluster.
- ``invariants``: the invariant checker (nothing lost, nothing overbooked).
"""
