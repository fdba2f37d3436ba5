"""First start: the admin user, the `main` project and the `local` fleet, so that a new user's
first `dstack apply` runs with nothing else configured. Later starts change nothing, except the
admin token when DSTACK_SERVER_ADMIN_TOKEN names a new one."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from sqlalchemy import select

from dstack.models.fleets import FleetSpec, FleetStatus
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.crypto import hash_token
from dstack.server.services.users import create_project, create_user, get_project, get_user_by_name

ADMIN = "admin"
MAIN_PROJECT = "main"
LOCAL_FLEET = "local"


@dataclass
class BootstrapResult:
    admin_token: str | None  # None when the token was set earlier and is not known any more
    created: bool
    admin_token_hash: str = ""
    # What `dstack server` prints about its backends (set up, and those it could not set up).
    backends: list[str] = field(default_factory=list)


def local_fleet_spec(backends: list[str]) -> FleetSpec:
    return FleetSpec(
        configuration={
            "type": "fleet",
            "name": LOCAL_FLEET,
            "nodes": {"min": 0, "target": 0, "max": 1},
            "placement": "any",
            "backends": backends,
            "blocks": 1,
            "idle_duration": None,
        },
        configuration_path=None,
        profile=None,
        autocreated=False,
    )


async def bootstrap(ctx: ServerContext) -> BootstrapResult:
    env_token = ctx.settings.admin_token
    async with ctx.db.session() as s:
        admin = await get_user_by_name(s, ADMIN)
        if admin is not None:
            if env_token and admin.token_hash != hash_token(env_token):
                admin.token_hash = hash_token(env_token)
                await s.commit()
            return BootstrapResult(
                admin_token=env_token, created=False, admin_token_hash=admin.token_hash
            )
        admin, token = await create_user(s, ADMIN, global_role="admin", token=env_token)
        await s.flush()
        project = await get_project(s, MAIN_PROJECT) or await create_project(s, admin, MAIN_PROJECT)
        await s.flush()
        # The `local` fleet, over the backend(s) that run jobs on the server's own machine,
        # goes to the one project they serve.
        own = [b.type for b in ctx.backends.shared if not b.capabilities.remote_hosts]
        if own:
            owner = ctx.settings.local_backend_project
            if owner != project.name:
                project = await get_project(s, owner) or await create_project(s, admin, owner)
                await s.flush()
            await _create_local_fleet(s, project, own)
        await s.commit()
        return BootstrapResult(admin_token=token, created=True, admin_token_hash=hash_token(token))


async def _create_local_fleet(s, project: t.Project, backends: list[str]) -> None:  # type: ignore[no-untyped-def]
    exists = (
        await s.execute(
            select(t.Fleet).where(
                t.Fleet.project_id == project.id,
                t.Fleet.name == LOCAL_FLEET,
                t.Fleet.deleted.is_(False),
            )
        )
    ).scalar_one_or_none()
    if exists is not None:
        return
    now = utcnow()
    fleet = t.Fleet(
        id=str(uuid.uuid4()),
        project_id=project.id,
        name=LOCAL_FLEET,
        status=FleetStatus.ACTIVE.value,
        spec=json.dumps(local_fleet_spec(backends).model_dump(mode="json")),
        created_at=now,
        last_processed_at=now,
        dirty=False,
    )
    s.add(fleet)
    events.record(
        s,
        project_id=project.id,
        target_type="fleet",
        target_id=fleet.id,
        target_name=LOCAL_FLEET,
        message="Fleet created over the local backend (this machine)",
        now=now,
    )
