"""Every state change leaves an event row a user can read (`dstack event`, `ps -v`)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.events import Event as EventModel
from dstack.models.events import EventTarget
from dstack.server.db import tables as t


def record(
    session: AsyncSession,
    *,
    project_id: str | None,
    target_type: str,
    target_id: str,
    target_name: str,
    message: str,
    now: datetime,
    actor: str | None = None,
    within_run_id: str | None = None,
) -> None:
    session.add(
        event_row(
            project_id=project_id,
            target_type=target_type,
            target_id=target_id,
            target_name=target_name,
            message=message,
            now=now,
            actor=actor,
            within_run_id=within_run_id,
        )
    )


def event_row(
    *,
    project_id: str | None,
    target_type: str,
    target_id: str,
    target_name: str,
    message: str,
    now: datetime,
    actor: str | None = None,
    within_run_id: str | None = None,
) -> t.Event:
    """The row `record` adds, for a caller that inserts it itself (db/core_rows.py)."""
    return t.Event(
        id=str(uuid.uuid4()),
        project_id=project_id,
        recorded_at=now,
        actor_user=actor,
        target_type=target_type,
        target_id=target_id,
        target_name=target_name,
        within_run_id=within_run_id,
        message=message,
    )


def run_event_row(run: t.Run, message: str, now: datetime, actor: str | None = None) -> t.Event:
    """`run_event`'s row, for a caller that inserts it itself."""
    return event_row(
        project_id=run.project_id,
        target_type="run",
        target_id=run.id,
        target_name=run.run_name,
        message=message,
        now=now,
        actor=actor,
        within_run_id=run.id,
    )


def run_event(
    session: AsyncSession, run: t.Run, message: str, now: datetime, actor: str | None = None
) -> None:
    """An event about a run, shown with the run's own events (`event --within-run`)."""
    session.add(run_event_row(run, message, now, actor))


async def list_events(
    session: AsyncSession,
    *,
    project_id: str,
    project_name: str,
    target_type: str | None = None,
    target_name: str | None = None,
    within_run_id: str | None = None,
    within_fleet_id: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[EventModel]:
    q = select(t.Event).where(t.Event.project_id == project_id)
    if target_type:
        q = q.where(t.Event.target_type == target_type)
    if target_name:
        q = q.where(t.Event.target_name == target_name)
    if within_run_id:
        q = q.where(t.Event.within_run_id == within_run_id)
    if within_fleet_id:  # the fleet's own events and its instances'
        instances = select(t.Instance.id).where(t.Instance.fleet_id == within_fleet_id)
        q = q.where(or_(t.Event.target_id == within_fleet_id, t.Event.target_id.in_(instances)))
    if since is not None:
        q = q.where(t.Event.recorded_at >= since)
        q = q.order_by(t.Event.recorded_at.asc())
        rows = (await session.execute(q.limit(10_000))).scalars().all()
    else:
        q = q.order_by(t.Event.recorded_at.desc()).limit(limit)
        rows = list(reversed((await session.execute(q)).scalars().all()))
    return [
        EventModel(
            id=r.id,
            message=r.message,
            recorded_at=r.recorded_at,
            actor_user=r.actor_user,
            targets=[
                EventTarget(
                    type=r.target_type,
                    project_name=project_name,
                    id=r.target_id,
                    name=r.target_name,
                )
            ],
        )
        for r in rows
    ]
