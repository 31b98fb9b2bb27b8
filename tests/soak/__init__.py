"""`make soak`: an accelerated month of retention, snapshots and restarts (issue #21); not part of `make test`."""
