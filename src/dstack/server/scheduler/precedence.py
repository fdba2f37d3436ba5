"""Queue precedence: a queued job never takes a host's capacity that a queued job of higher
precedence (the run's priority, then the job's submission) could take (DESIGN.md,
'Scheduling').

Claims run in precedence order, but the passes of one claim place their jobs side by side,
and a pass that comes round alone (a resync) sees nothing of the others; so before a job
takes blocks on a pool host, the queued jobs ahead of it are checked against that host with
`rank()` itself. Only a rival that fits the host now and would not fit once this job took its
blocks makes the job wait: a rival that fits nowhere, or fits beside this job, blocks nobody.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dstack.server.scheduler.passes import PoolPass
from dstack.server.scheduler.placement import Candidate, PoolInstance, Requirements
from dstack.server.scheduler.ranking import rank


@dataclass(frozen=True, slots=True)
class Rival:
    """A queued job of the same project ahead of the one being placed."""

    job_id: str
    run_name: str
    priority: int
    # None: its place depends on what only its own pass reads (its volumes, its replica's
    # other nodes), so it is never assumed to want this host.
    req: Requirements | None
    # Placed by a pass of the same claim: where that pass put it (None: nowhere).
    in_batch: bool = False
    placed_on: str | None = None


def outranked_by(place: Candidate, inst: PoolInstance, rivals: Sequence[Rival]) -> Rival | None:
    """The first rival (in precedence order) that `place`, blocks taken on `inst`, would
    keep from a host it could have now; None when the job may take it."""
    if place.instance_id != inst.id or not place.blocks:
        return None  # a new instance, or a share that takes no blocks: nobody loses a place
    after = PoolPass([inst], [])
    after.take(place)
    left = after.current_pool()
    for r in rivals:
        if r.req is None or (r.in_batch and r.placed_on != inst.id):
            continue  # a rival in the same claim went elsewhere (or nowhere) on the same view
        if rank(r.req, [inst], []).best is not None and rank(r.req, left, []).best is None:
            return r
    return None


def waiting_message(rival: Rival, inst: PoolInstance) -> str:
    """Why the job waits, said once as the job's event."""
    return (
        f"run {rival.run_name} (priority {rival.priority}) is ahead in the queue for "
        f"instance {inst.name}"
    )
