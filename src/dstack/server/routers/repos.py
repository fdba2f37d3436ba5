"""Repo endpoints: the code archive `dstack apply` uploads for a run, stored by its hash and
refused above the server's upload limit."""

from __future__ import annotations

from fastapi import APIRouter, Depends, UploadFile

from dstack.server.routers.deps import ProjectAccess, get_ctx, project_access
from dstack.server.services import codes
from dstack.server.services.context import ServerContext

router = APIRouter()


@router.post("/api/project/{project_name}/repos/upload_code")
async def upload_code(
    file: UploadFile,
    a: ProjectAccess = Depends(project_access),
    ctx: ServerContext = Depends(get_ctx),
) -> dict:
    limit = ctx.settings.code_upload_limit
    blob = await file.read(limit + 1 if limit else -1)  # one byte over tells it is too large
    digest = await codes.store_code(a.session, a.project, blob, limit)
    return {"hash": digest}
