"""Offers for `dstack offer`: the same ranking placement uses, for a synthetic job."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.runs import RunSpec
from dstack.server.db import tables as t
from dstack.server.scheduler.placement import rank
from dstack.server.services.context import ServerContext
from dstack.server.services.jobspecs import build_job_specs
from dstack.server.services.pool import load_pool, requirements_for
from dstack.server.services.runs import parse_run_configuration


async def list_offers(
    ctx: ServerContext, s: AsyncSession, project: t.Project, spec: RunSpec, max_offers: int | None
) -> dict[str, Any]:
    conf = parse_run_configuration(spec)
    job = build_job_specs("offer", conf, None)[0]
    pool = await load_pool(ctx, s, project.id)
    ranking = rank(requirements_for(conf, job.requirements), pool.instances, pool.capacity)
    offers = [c.offer.model_dump(mode="json") for c in ranking.candidates]
    return {"offers": offers[: max_offers or 50], "total_offers": len(offers)}
