"""Where a submitted job goes: the scheduler's ranking over the project's pool and what its
backends could add, plus the multi-node rules. Split from `job_worker.py`, which loads the
snapshot and applies the result; nothing here writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from dstack.models.configurations import parse_configuration
from dstack.models.runs import JobProvisioningData, JobSpec, RunSpec
from dstack.server.db import tables as t
from dstack.server.reconcilers.job_facts import replica_peers, tried_offers
from dstack.server.scheduler import multinode
from dstack.server.scheduler.placement import Candidate, Ranking, Requirements, no_capacity_message
from dstack.server.scheduler.ranking import rank
from dstack.server.services.context import ServerContext
from dstack.server.services.hosts import host_access
from dstack.server.services.job_volumes import Mounts, placed_volumes, with_volumes
from dstack.server.services.pool import PoolRows, fleet_conf, requirements_for, with_capacity

# (the chosen place or None, whether the job queues for a busy one, why nothing fits or,
# when it queues for a volume, why it waits)
Placement = tuple[Candidate | None, bool, str | None]


class Placer:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._reqs: dict[tuple[str, str, int], Requirements] = {}

    def requirements(self, run: t.Run, spec: JobSpec) -> Requirements:
        """The configuration is parsed once per run version, not on every placement pass."""
        key = (run.id, run.run_spec, spec.job_num)
        cached = self._reqs.get(key)
        if cached is None:
            if len(self._reqs) > 4096:
                self._reqs.clear()
            conf = parse_configuration(RunSpec.model_validate_json(run.run_spec).configuration)
            cached = self._reqs[key] = requirements_for(conf, spec.requirements)
        return cached

    async def place(
        self, run: t.Run, job: t.Job, spec: JobSpec, rows: PoolRows, mounts: Mounts = ()
    ) -> Placement:
        """Rank the places the job could go. Backend offers are fetched here, after the
        snapshot's transaction ended (a cloud's offers are network calls). `mounts`: where
        the job's volumes are (services/job_volumes.py), read in the snapshot."""
        req = with_volumes(self.requirements(run, spec), mounts)
        pool = await with_capacity(self.ctx, rows, req)
        tried = frozenset(o.key() for o in tried_offers(job))
        ranking = rank(req, pool.instances, pool.capacity, tried)
        best = ranking.best
        if spec.jobs_per_replica <= 1 and best is not None:
            return best, False, None  # a job that fits never formats why others do not
        ranking.rejections.extend(pool.notes)
        message = no_capacity_message(ranking, pool.has_fleets)
        if best is None and ranking.waiting:
            message = ranking.waiting
        if spec.jobs_per_replica <= 1:
            return best, ranking.only_busy, message
        async with self.ctx.db.session() as s:
            return await self._multinode(s, job, spec, ranking, message)

    async def _multinode(
        self, s: Any, job: t.Job, spec: JobSpec, ranking: Ranking, message: str
    ) -> Placement:
        fleets = (
            await s.execute(
                select(t.Fleet).where(
                    t.Fleet.project_id == job.project_id, t.Fleet.deleted.is_(False)
                )
            )
        ).scalars()
        cluster = {f.id for f in fleets if fleet_conf(f).get("placement") == "cluster"}
        peers = await replica_peers(s, job)
        master = next((p for p in peers if p.job_num == 0), None)
        master_inst = (
            await s.get(t.Instance, master.instance_id) if master and master.instance_id else None
        )
        choice = multinode.choose(
            ranking,
            spec.jobs_per_replica,
            job.job_num,
            cluster,
            master_inst.fleet_id if master_inst else None,
            {p.instance_id for p in peers if p.instance_id and p.id != job.id},
        )
        return choice.candidate, choice.queued, choice.message or message


def placement_values(
    ctx: ServerContext, spec: JobSpec, mounts: Mounts, inst: t.Instance, c: Candidate
) -> dict[str, Any]:
    """The job's columns once it is placed on `inst` (an existing instance or one just
    created for it): where it runs, its blocks, how to reach the host, its volumes."""
    offer = c.offer
    jpd = JobProvisioningData(
        backend=offer.backend,
        instance_type=offer.instance,
        instance_id=inst.id,
        internal_ip=None,
        region=offer.region,
        price=offer.price,
        dockerized=False,
        **host_access(ctx, inst),
    )
    return {
        "instance_id": inst.id,
        "used_blocks": c.blocks,
        "job_provisioning_data": jpd.model_dump_json(),
        "volumes": placed_volumes(spec, mounts, c.volumes),
        "_fleet_id": c.fleet_id,
    }
