"""Admission policy: a pure function of the spec and the configuration."""

from __future__ import annotations

import msgspec

from schemas.jobs import JobSpec
from services.runtime.config import Config


class Verdict(msgspec.Struct, frozen=True):
    accepted: bool
    reason: str = ""
    field: str | None = None


ACCEPT = Verdict(True)


def admit(spec: JobSpec, config: Config) -> Verdict:
    """Accept a job or say why not (and which field)."""
    lim = config.limits
    r = spec.resources
    if spec.technology not in config.technologies:
        known = ", ".join(config.technologies)
        return Verdict(False, f"unknown technology {spec.technology!r} (known: {known})", "technology")
    if spec.replicas > lim.max_replicas:
        return Verdict(False, f"replicas {spec.replicas} exceeds the limit of {lim.max_replicas}", "replicas")
    if r.cpu > lim.max_cpu:
        return Verdict(False, f"cpu {r.cpu:g} per replica exceeds the limit of {lim.max_cpu:g}", "resources.cpu")
    if r.memory_mb > lim.max_memory_mb:
        return Verdict(
            False,
            f"memory_mb {r.memory_mb} per replica exceeds the limit of {lim.max_memory_mb}",
            "resources.memory_mb",
        )
    if r.gpu > lim.max_gpu:
        return Verdict(False, f"gpu {r.gpu} per replica exceeds the limit of {lim.max_gpu}", "resources.gpu")
    if spec.cluster == "dedicated" and not any(
        t.vcpu >= r.cpu and t.memory_mb >= r.memory_mb and t.gpu >= r.gpu for t in config.instance_types
    ):
        return Verdict(False, f"no instance type offers {r.cpu:g} cpu, {r.memory_mb} MiB, {r.gpu} gpu", "resources")
    return ACCEPT
