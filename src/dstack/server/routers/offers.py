"""Offer endpoints: what a run spec could be placed on (`dstack offer`), from the same
scheduler that `apply` uses, listed or grouped per GPU."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from dstack.models.requests import ListGpusRequest, ListOffersRequest
from dstack.server.routers.deps import ProjectAccess, get_ctx, project_access
from dstack.server.services import offers
from dstack.server.services.context import ServerContext

router = APIRouter()


@router.post("/api/project/{project_name}/offers/list")
async def offers_list(
    body: ListOffersRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    return await offers.list_offers(ctx, a.session, a.project, body.run_spec, body.max_offers)


@router.post("/api/project/{project_name}/gpus/list")
async def gpus_list(
    body: ListGpusRequest,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    group_by = list(body.group_by or [])
    return await offers.list_gpus(ctx, a.session, a.project, body.run_spec, group_by)
