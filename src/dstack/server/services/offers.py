"""Offers for `dstack offer`: the same ranking placement uses, for a synthetic job.

Without `fleets` (and without `creation_policy: reuse`) the listing is what the configured
backends could create for the project, whatever fleets exist: existing instances are left out
and no fleet's `nodes` or `backends` limits apply (cli.md: "all backend offers are listed").
With `fleets`, it is exactly what a run with that configuration would be offered (the run plan's
pool: the fleets' instances and the capacity their backends could still add).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.runs import RunSpec
from dstack.server.db import tables as t
from dstack.server.scheduler.placement import Ranking
from dstack.server.scheduler.ranking import rank
from dstack.server.services.context import ServerContext
from dstack.server.services.gpu_groups import check_group_by, group_gpus
from dstack.server.services.jobspecs import build_job_specs
from dstack.server.services.plan_notes import unconfigured_backends, unique_offers
from dstack.server.services.pool import (
    backend_capacity,
    load_pool_rows,
    requirements_for,
    with_capacity,
)
from dstack.server.services.runs import parse_run_configuration

DEFAULT_MAX_OFFERS = 50


async def _ranking(
    ctx: ServerContext, s: AsyncSession, project: t.Project, spec: RunSpec
) -> tuple[Ranking, list[str]]:
    conf = parse_run_configuration(spec)
    job = build_job_specs("offer", conf, None)[0]
    req = requirements_for(conf, job.requirements)
    rows = await load_pool_rows(ctx, s, project.id)
    await s.commit()  # backends are asked outside any transaction
    # `--backend aws` on a server without AWS: said first, not left as "no offers".
    notes = unconfigured_backends(ctx, project.id, req)
    if req.fleets or req.creation_policy == "reuse":
        pool = await with_capacity(ctx, rows, req)
        return rank(req, pool.instances, pool.capacity), [*notes, *pool.notes]
    capacity = await backend_capacity(ctx, rows, req, notes)
    return rank(req, [], [capacity]), notes


async def list_offers(
    ctx: ServerContext, s: AsyncSession, project: t.Project, spec: RunSpec, max_offers: int | None
) -> dict[str, Any]:
    ranking, notes = await _ranking(ctx, s, project, spec)
    offers = [o.model_dump(mode="json") for o in unique_offers(ranking.candidates)]
    return {
        "offers": offers[: max_offers or DEFAULT_MAX_OFFERS],
        "total_offers": len(offers),
        # Backends that offered nothing and why (no catalog, not for this project).
        "notes": notes,
    }


async def list_gpus(
    ctx: ServerContext, s: AsyncSession, project: t.Project, spec: RunSpec, group_by: list[str]
) -> dict[str, Any]:
    check_group_by(group_by)
    ranking, notes = await _ranking(ctx, s, project, spec)
    groups = group_gpus(unique_offers(ranking.candidates), group_by)
    return {"gpus": [g.model_dump(mode="json") for g in groups], "notes": notes}
