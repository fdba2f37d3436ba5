"""Volume plan and create (`dstack apply -f volume.dstack.yml`, `volumes/{get_plan,create}`).

Everything is checked before a row is written: a network volume's backend must be configured
for the project and have network volumes (`capabilities.volumes`); a directory volume's fleet
must exist and keep its machines (an SSH fleet, or the fleet over this machine). A backend
fleet's instances come and go, and a directory lives on one machine's disk, so it is refused.

A volume is never updated in place (a cloud disk cannot change backend, region or, here, size
without a copy): applying the same configuration again changes nothing, a different one is
refused naming what differs, and the user deletes the volume first.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ResourceExistsError, ServerClientError
from dstack.models.common import canonical_backend
from dstack.models.volumes import Volume, VolumeStatus
from dstack.models.volumes_config import VolumeConfiguration
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.named_config import parse_named
from dstack.server.services.volumes import find_volume, volume_model

CREATE = "create"
NO_CHANGES = "no_changes"


def parse_volume(configuration: dict[str, Any]) -> VolumeConfiguration:
    return parse_named(configuration, VolumeConfiguration, "volume")


def stored(conf: VolumeConfiguration) -> dict[str, Any]:
    """The configuration as kept on the row and compared on apply (defaults filled in)."""
    return conf.model_dump(mode="json")


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


async def _fleet_for_directory(
    ctx: ServerContext, s: AsyncSession, project: t.Project, name: str
) -> t.Fleet:
    q = select(t.Fleet).where(
        t.Fleet.project_id == project.id, t.Fleet.name == name, t.Fleet.deleted.is_(False)
    )
    fleet = (await s.execute(q)).scalar_one_or_none()
    if fleet is None:
        raise ServerClientError(f"fleet {name} does not exist in project {project.name}",
                                field="fleet")  # fmt: skip
    conf = json.loads(fleet.spec).get("configuration") or {}
    if conf.get("ssh_config"):
        return fleet
    backends = [
        ctx.backends.get(canonical_backend(b), project.id) for b in conf.get("backends") or []
    ]
    # This machine's backend (its jobs run beside the server: no remote hosts) keeps one host.
    if backends and all(b is not None and not b.capabilities.remote_hosts for b in backends):
        return fleet
    raise ServerClientError(
        f"fleet {name} is a backend fleet: its instances are created and terminated as needed, "
        "and a directory volume lives on one machine's disk. Use an SSH fleet or the local "
        "fleet, or a network volume (`backend`)",
        field="fleet",
    )


def _check_backend(ctx: ServerContext, project: t.Project, conf: VolumeConfiguration) -> None:
    backend = ctx.backends.get(conf.backend, project.id)
    if backend is None:
        have = ", ".join(ctx.backends.types_for(project.id)) or "none"
        raise ServerClientError(
            f"backend {conf.backend} is not configured for project {project.name} "
            f"(configured: {have})",
            field="backend",
        )
    if not backend.capabilities.volumes:
        raise ServerClientError(f"backend {conf.backend} has no network volumes", field="backend")
    if conf.volume_id is None and conf.size is None:
        raise ServerClientError(
            "`size` is required to create a volume (or give `volume_id` to register an "
            "existing one)",
            field="size",
        )


async def _check(
    ctx: ServerContext, s: AsyncSession, project: t.Project, conf: VolumeConfiguration
) -> t.Fleet | None:
    if conf.fleet is not None:
        return await _fleet_for_directory(ctx, s, project, conf.fleet)
    _check_backend(ctx, project, conf)
    return None


async def _existing(
    s: AsyncSession, project: t.Project, conf: VolumeConfiguration
) -> t.Volume | None:
    row = await find_volume(s, project.id, conf.name or "")
    if row is None:
        return None
    diff = differences(json.loads(row.configuration), stored(conf))
    if diff:
        raise ServerClientError(
            f"volume {conf.name} exists with a different configuration ({'; '.join(diff)}). "
            f"Volumes are not updated in place: delete it first (`dstack volume delete "
            f"{conf.name}`)",
            field="name",
        )
    return row


def summary(conf: VolumeConfiguration) -> dict[str, Any]:
    """What the plan shows."""
    kind = "external" if conf.volume_id else "managed"
    if conf.fleet is not None:
        kind = "directory"
    return {
        "volume_type": kind,
        "backend": conf.backend,
        "region": conf.region,
        "availability_zone": conf.availability_zone,
        "size_gb": conf.size,
        "volume_id": conf.volume_id,
        "fleet": conf.fleet,
        "auto_cleanup_duration": conf.auto_cleanup_duration,
    }


async def get_plan(
    ctx: ServerContext,
    s: AsyncSession,
    user: t.User,
    project: t.Project,
    configuration: dict[str, Any],
) -> dict[str, Any]:
    conf = parse_volume(configuration)
    existing = await _existing(s, project, conf)
    await _check(ctx, s, project, conf)
    return {
        "project_name": project.name,
        "user": user.name,
        "configuration": stored(conf),
        "action": NO_CHANGES if existing is not None else CREATE,
        "current_resource": (
            (await volume_model(s, existing, project)).model_dump(mode="json")
            if existing is not None
            else None
        ),
        **summary(conf),
    }


def _row(
    user: t.User, project: t.Project, conf: VolumeConfiguration, fleet: t.Fleet | None
) -> t.Volume:
    now = utcnow()
    directory = fleet is not None
    return t.Volume(
        id=str(uuid.uuid4()),
        project_id=project.id,
        user_id=user.id,
        name=conf.name,
        configuration=json.dumps(stored(conf)),
        # A directory volume has nothing to create: the agent makes the directory at job start.
        status=VolumeStatus.ACTIVE.value if directory else VolumeStatus.SUBMITTED.value,
        created_at=now,
        last_processed_at=now,
        dirty=True,
        backend=conf.backend,
        region=conf.region,
        availability_zone=conf.availability_zone,
        size_gb=math.ceil(conf.size) if conf.size is not None else None,
        external_id=conf.volume_id,
        external=conf.volume_id is not None,
        fleet_id=fleet.id if fleet else None,
        attempts=0,
    )


def _created_message(conf: VolumeConfiguration) -> str:
    if conf.fleet is not None:
        return f"Volume created on fleet {conf.fleet} (a directory on the host that first uses it)"
    what = f"registering {conf.volume_id}" if conf.volume_id else f"{conf.size:g}GB"
    return f"Volume submitted: {conf.backend} {conf.region} ({what})"


async def create(
    ctx: ServerContext,
    s: AsyncSession,
    user: t.User,
    project: t.Project,
    configuration: dict[str, Any],
) -> Volume:
    """Create the volume; the same configuration again returns the existing one unchanged."""
    conf = parse_volume(configuration)
    existing = await _existing(s, project, conf)
    if existing is not None:
        return await volume_model(s, existing, project)
    fleet = await _check(ctx, s, project, conf)
    row = _row(user, project, conf, fleet)
    s.add(row)
    events.record(
        s,
        project_id=project.id,
        target_type="volume",
        target_id=row.id,
        target_name=row.name,
        message=_created_message(conf),
        now=row.created_at,
        actor=user.name,
    )
    try:
        await s.commit()
    except IntegrityError as e:  # another create of that name won the race
        await s.rollback()
        raise ResourceExistsError(f"volume {conf.name} already exists", field="name") from e
    ctx.hub.wake("volumes")
    return await volume_model(s, row, project)
