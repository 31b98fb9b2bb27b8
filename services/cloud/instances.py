"""One of our cloud instances as EC2 reports it, its life states, and the tags that say whose it is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """What EC2 says about one of our instances."""

    instance_id: str
    instance_type: str
    state: str
    private_ip: str | None = None
    job_id: str | None = None
    replica: int | None = None
    launch_time: datetime | None = None
    replaces: str | None = None
    """For a replacement (§8.2): the instance it replaces (its ``<prefix>:replaces`` tag)."""


LIVE_STATES = frozenset({"pending", "running", "stopping", "stopped"})
"""States of an instance that still exists (and may cost money)."""
DEAD_STATES = frozenset({"shutting-down", "terminated"})


@dataclass(frozen=True, slots=True)
class TagScheme:
    """The tags every instance carries from launch: project, job id, replica, and a ``Name``."""

    prefix: str
    project: str

    @property
    def project_key(self) -> str:
        return f"{self.prefix}:project"

    @property
    def job_key(self) -> str:
        return f"{self.prefix}:job-id"

    @property
    def replica_key(self) -> str:
        return f"{self.prefix}:replica"

    @property
    def replaces_key(self) -> str:
        return f"{self.prefix}:replaces"

    def for_replica(self, job_id: str, replica: int, replaces: str | None = None) -> dict[str, str]:
        """A replica's tags; a replacement also names the instance it replaces (looked up by it)."""
        tags = {
            self.project_key: self.project,
            self.job_key: job_id,
            self.replica_key: str(replica),
            "Name": f"{self.project}-{job_id}-{replica}",
        }
        if replaces:
            tags[self.replaces_key] = replaces
        return tags


__all__ = ["DEAD_STATES", "LIVE_STATES", "InstanceInfo", "TagScheme"]
