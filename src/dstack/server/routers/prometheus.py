"""`GET /metrics`: Prometheus' scrape endpoint (docs/metrics.md).

Off unless `DSTACK_ENABLE_PROMETHEUS_METRICS` is set (404 then, as for any unknown path).
On the API port the authorization table (server/authz.py, rule METRICS) asks for a token of
a user with the global `admin` role: the exposition
names every project's runs. A scraper that cannot send a token scrapes the separate listener
(`DSTACK_SERVER_METRICS_ADDRESS`, `services/metrics_listener.py`) instead."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Response
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.server.routers.deps import get_ctx, get_session
from dstack.server.services.context import ServerContext

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(
    ctx: ServerContext = Depends(get_ctx),
    s: AsyncSession = Depends(get_session),
) -> Response:
    if not ctx.settings.prometheus_enabled:
        raise HTTPException(404, "Prometheus metrics are off (DSTACK_ENABLE_PROMETHEUS_METRICS)")
    from dstack.server.services import prometheus  # prometheus_client: only when scraped

    return Response(await prometheus.exposition(s), media_type=prometheus.CONTENT_TYPE)
