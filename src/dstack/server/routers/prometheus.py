"""`GET /metrics`: Prometheus' scrape endpoint (docs/metrics.md).

Off unless `DSTACK_ENABLE_PROMETHEUS_METRICS` is set (404 then, as for any unknown path).
On the API port it asks for a token of a user with the global `admin` role: the exposition
names every project's runs. A scraper that cannot send a token scrapes the separate listener
(`DSTACK_SERVER_METRICS_ADDRESS`, `services/metrics_listener.py`) instead."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.server.routers.deps import AuthError, get_ctx, get_session, get_user
from dstack.server.services import prometheus
from dstack.server.services.context import ServerContext

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request,
    ctx: ServerContext = Depends(get_ctx),
    s: AsyncSession = Depends(get_session),
) -> Response:
    if not ctx.settings.prometheus_enabled:
        raise HTTPException(404, "Prometheus metrics are off (DSTACK_ENABLE_PROMETHEUS_METRICS)")
    user = await get_user(request, s)  # after the switch: off means 404 for everybody
    if user.global_role != "admin":
        raise AuthError("Prometheus metrics need the token of a global admin")
    return Response(await prometheus.exposition(s), media_type=prometheus.CONTENT_TYPE)
