"""What the provisioner and teardown share about dedicated clusters, owned by neither.

- :mod:`.instances`: what EC2 says about one of our instances, and how instances are tagged;
- :mod:`.errors`: EC2 error codes and which way each goes (capacity, transient, permanent);
- :mod:`.ec2`: the aioboto3 adapter over the EC2 calls of a cluster's life;
- :mod:`.records`: the ``JOB_LIFECYCLE`` key-value bucket of per-job records (written by
  teardown, read by the provisioner).

Each service's own rules stay in its folder: launch planning and type fallback in
``services/provisioner``, release-exactly-once and orphan verdicts in ``services/teardown``.
This package is a library: no service calls another at run time.
"""
