"""Multi-node placement, pure: all N jobs of a replica on N distinct whole instances of one
`placement: cluster` fleet (server.md §4.5). The master (job 0) is placed only when the fleet
has N whole free instances, so the replica never half-starts; workers follow it into its fleet.
"""

from __future__ import annotations

from dataclasses import dataclass

from dstack.server.scheduler.placement import Candidate, Ranking


@dataclass(frozen=True)
class MultinodeChoice:
    candidate: Candidate | None
    queued: bool  # wait (the master is not placed yet, or the cluster is busy now)
    message: str | None  # why it can never fit, when candidate is None and not queued


def choose(
    ranking: Ranking,
    nodes: int,
    job_num: int,
    cluster_fleets: set[str],
    master_fleet: str | None,
    taken: set[str],
) -> MultinodeChoice:
    """`taken`: instances other jobs of this replica already hold."""
    whole = [
        c
        for c in ranking.candidates
        if c.instance_id is not None
        and c.fleet_id in cluster_fleets
        and c.instance_id not in taken
        and c.total_blocks in (None, c.blocks)
    ]
    if job_num > 0:
        if master_fleet is None:
            return MultinodeChoice(None, True, None)
        mine = [c for c in whole if c.fleet_id == master_fleet]
        free = [c for c in mine if c.available]
        if free:
            return MultinodeChoice(free[0], False, None)
        return MultinodeChoice(None, bool(mine), None if mine else _message(nodes, ranking))
    by_fleet: dict[str, list[Candidate]] = {}
    for c in whole:
        by_fleet.setdefault(c.fleet_id, []).append(c)
    fits = [cs for cs in by_fleet.values() if len(cs) >= nodes]
    if not fits:
        return MultinodeChoice(None, False, _message(nodes, ranking))
    for cs in fits:
        free = [c for c in cs if c.available]
        if len(free) >= nodes:
            return MultinodeChoice(free[0], False, None)
    return MultinodeChoice(None, True, None)


def _message(nodes: int, ranking: Ranking) -> str:
    why = "; ".join(ranking.rejections[:5])
    return (
        f"A multi-node task needs {nodes} instances of one fleet with `placement: cluster` that "
        "each meet the requirements as a whole (no blocks of a shared instance)"
        + (f"; rejected: {why}" if why else "")
    )
