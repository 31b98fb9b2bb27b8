"""Resizing a placed job (``job.scale``, §8.3): pure, over the job's latest revision.

A shared job's next revision comes from :func:`services.placement.moves.replan` with
``wanted`` (shrink removes the highest replica numbers, growth places the new ones with the
job's strategy and constraints, and whatever fits nowhere is missing, ``placement.degraded``).
A dedicated job has no reservation here: its next revision (:func:`rescale_dedicated`) lists
an instance type per replica for the new count, which the provisioner turns into launched or
terminated instances.

Changes of a dedicated revision name instance types where a shared one names nodes: growth
``{"replica", "from": null, "to": <instance type>}``, shrink ``{"from": <instance type>,
"to": null}``, reason ``scale``.
"""

from __future__ import annotations

from schemas import events as ev
from services.placement.moves import Replan, events_of, next_revision, replan
from services.placement.state import Reservation, World

__all__ = ["rescale_dedicated", "rescale_shared"]


def rescale_shared(
    res: Reservation,
    replicas: int,
    world: World,
    now: float,
    ttl: float,
    top_n: int = 10,
    *,
    cap: tuple[int, str] | None = None,
) -> list[ev.PlacementDecided | ev.PlacementDegraded]:
    """The events that resize ``res``'s job to ``replicas`` (its next revision, and a
    ``placement.degraded`` of it when replicas fit nowhere, or not within ``cap``: the tenant's
    quota, see :func:`services.placement.moves.replan`); empty when nothing is due."""
    plan: Replan | None = replan(res, world, now, ttl, top_n, wanted=replicas, cap=cap)
    return [] if plan is None else events_of(res, plan)


def rescale_dedicated(d: ev.PlacementDecided, replicas: int) -> ev.PlacementDecided | None:
    """The next revision of dedicated job ``d`` with ``replicas`` replicas (the kept ones keep
    their instance type, new ones take the type of the job's existing replicas), or None when
    it has that many already."""
    old = {a.replica: a.instance_type for a in d.assignments}
    if d.wanted == replicas and set(old) == set(range(replicas)):
        return None
    kind = next((t for t in old.values() if t), None)
    if kind is None:
        kind = next((c.instance_type for c in d.candidates if c.instance_type), None)
    changes: list[ev.Change] = []
    assignments: list[ev.Assignment] = []
    for r in range(replicas):
        t = old.get(r) or kind
        assignments.append(ev.Assignment(replica=r, instance_type=t))
        if r not in old:
            changes.append(ev.Change(replica=r, from_=None, to=t, reason="scale"))
    changes += [ev.Change(replica=r, from_=t, to=None, reason="scale") for r, t in sorted(old.items()) if r >= replicas]
    return next_revision(d, d.revision + 1, assignments, d.candidates, changes, replicas)
