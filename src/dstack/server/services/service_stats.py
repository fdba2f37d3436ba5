"""The request rate of a service, as the proxy recorded it in `service_stats` (see
`server/proxy/stats.py`, which writes the rows); read by the run reconciler to autoscale."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.server.db import tables as t

BUCKET = 5  # seconds per row; the proxy's writer uses the same


def bucket_of(ts: float) -> int:
    return int(ts) // BUCKET * BUCKET


async def request_rate(
    s: AsyncSession, run_id: str, window: int, now: datetime
) -> tuple[float, int]:
    """(requests per second over the last `window` seconds, requests held in the last 30 s).

    The current, partly filled bucket counts, and the window is measured up to now."""
    ts = now.timestamp()
    since = bucket_of(ts - window) + BUCKET
    row = (
        await s.execute(
            select(func.coalesce(func.sum(t.ServiceStat.requests), 0)).where(
                t.ServiceStat.run_id == run_id, t.ServiceStat.bucket >= since
            )
        )
    ).scalar_one()
    held = (
        await s.execute(
            select(func.coalesce(func.sum(t.ServiceStat.waiting), 0)).where(
                t.ServiceStat.run_id == run_id, t.ServiceStat.bucket >= bucket_of(ts - 30)
            )
        )
    ).scalar_one()
    span = max(ts - since, 1.0)
    return float(row) / span, int(held)
