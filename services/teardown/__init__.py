"""teardown: ends jobs exactly once (terminate instances, release reservations), expiry, orphan reaper.

Design notes: ``services/provisioner/README.md``.
"""
