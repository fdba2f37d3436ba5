"""Event rows for what the proxy changes about a replica (in or out of rotation), so that
`dstack event` tells why a replica stopped getting traffic. Written straight to the `events`
table: the proxy sits below services in the layering."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.wire import utcnow
from dstack.server.db import tables as t


def replica_event(s: AsyncSession, job: t.Job, message: str) -> None:
    s.add(
        t.Event(
            id=str(uuid.uuid4()),
            project_id=job.project_id,
            recorded_at=utcnow(),
            actor_user=None,
            target_type="job",
            target_id=job.id,
            target_name=job.job_name,
            within_run_id=job.run_id,
            message=message,
        )
    )
