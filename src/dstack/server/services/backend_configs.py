"""Projects' backends from `config.yml`: stored at start (credentials encrypted with the
server's key, the rest as plain JSON), read back for the backends to be built, and shown
through the API with every secret redacted.

The file is the only source: each start makes the table match it in one transaction, so a
backend removed from the file is gone after a restart, and a file that fails to load changed
nothing (it is validated before this runs)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import yaml
from pydantic import ConfigDict, TypeAdapter
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ResourceNotExistsError, ServerClientError
from dstack.models.backends import (
    BACKEND_CONFIG_CLASSES,
    CONFIGURABLE_BACKENDS,
    AnyBackendConfig,
)
from dstack.models.server_config import BackendInfo, BackendYAML, ServerConfig
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.services.bootstrap import ADMIN
from dstack.server.services.context import ServerContext
from dstack.server.services.crypto import Box
from dstack.server.services.users import create_project, get_project, get_user_by_name

REDACTED = "***"
EDIT_THE_FILE = (
    "backends are configured in ~/.dstack/server/config.yml on the server; "
    "edit it and restart the server"
)

# (project_id, project_name, the backend's configuration with decrypted credentials)
Configured = tuple[str, str, AnyBackendConfig]


# Built when a stored backend is first read (none are on a server without cloud backends).
_ADAPTER: TypeAdapter[AnyBackendConfig] = TypeAdapter(
    AnyBackendConfig, config=ConfigDict(defer_build=True)
)


def _split(conf: AnyBackendConfig) -> tuple[str, str]:
    """(config JSON with every secret value masked, secrets JSON). Each backend's model says
    which of its fields are secrets; the masked form is all the API ever shows."""
    data, secrets = conf.split_secrets(REDACTED)
    return json.dumps(data, sort_keys=True), json.dumps(secrets, sort_keys=True)


async def sync_server_config(ctx: ServerContext, config: ServerConfig) -> list[Configured]:
    """Make the projects and backend rows match the file, in one transaction; returns every
    project backend, read back from the rows."""
    async with ctx.db.session() as s:
        admin = await get_user_by_name(s, ADMIN)
        if admin is None:
            raise RuntimeError("the admin user must exist before config.yml is applied")
        keep: set[str] = set()
        now = utcnow()
        for pc in config.projects:
            project = await get_project(s, pc.name) or await create_project(s, admin, pc.name)
            for conf in pc.backends:
                keep.add(await _upsert(s, ctx.box, project.id, conf, now))
        await s.execute(delete(t.Backend).where(t.Backend.id.not_in(keep)))
        await s.commit()
        return await load_configured(s, ctx.box)


async def _upsert(
    s: AsyncSession, box: Box, project_id: str, conf: AnyBackendConfig, now: Any
) -> str:
    config, creds = _split(conf)
    row = (
        await s.execute(
            select(t.Backend).where(t.Backend.project_id == project_id, t.Backend.type == conf.type)
        )
    ).scalar_one_or_none()
    if row is None:
        row = t.Backend(
            id=str(uuid.uuid4()),
            project_id=project_id,
            type=conf.type,
            config=config,
            auth=box.encrypt(creds),
            created_at=now,
            updated_at=now,
        )
        s.add(row)
    elif row.config != config or box.decrypt(row.auth) != creds:
        row.config, row.auth, row.updated_at = config, box.encrypt(creds), now
    return row.id


def _config_of(row: t.Backend, box: Box) -> AnyBackendConfig:
    data = json.loads(row.config)
    cls = BACKEND_CONFIG_CLASSES[row.type]
    return _ADAPTER.validate_python(cls.join_secrets(data, json.loads(box.decrypt(row.auth))))


async def load_configured(s: AsyncSession, box: Box) -> list[Configured]:
    rows = (
        await s.execute(
            select(t.Backend, t.Project.name)
            .join(t.Project, t.Project.id == t.Backend.project_id)
            .order_by(t.Project.name, t.Backend.type)
        )
    ).all()
    return [(row.project_id, name, _config_of(row, box)) for row, name in rows]


# -- the API's view ---------------------------------------------------------------------------


def redacted_config(row: t.Backend) -> dict[str, Any]:
    """The stored configuration: credentials are masked there already (`_split`)."""
    return json.loads(row.config)


async def _rows(s: AsyncSession, project_id: str) -> list[t.Backend]:
    q = select(t.Backend).where(t.Backend.project_id == project_id).order_by(t.Backend.type)
    return list((await s.execute(q)).scalars())


def _info(ctx: ServerContext, project: t.Project, row: t.Backend) -> BackendInfo:
    failure = ctx.backends.failure(row.type, project.id)
    running = ctx.backends.get(row.type, project.id) is not None
    reason = failure.reason if failure else (None if running else "not set up on this server")
    return BackendInfo(
        name=row.type,
        type=row.type,
        config=redacted_config(row),
        status="ok" if running and failure is None else "error",
        reason=reason,
    )


def _server_wide(ctx: ServerContext, project: t.Project) -> list[BackendInfo]:
    return [
        BackendInfo(name=b.type, type=b.type, server_wide=True)
        for b in ctx.backends.shared
        if b.serves(project.name)
    ]


async def list_backends(
    ctx: ServerContext, s: AsyncSession, project: t.Project
) -> list[BackendInfo]:
    rows = [_info(ctx, project, r) for r in await _rows(s, project.id)]
    return _server_wide(ctx, project) + rows


async def get_backend(
    ctx: ServerContext, s: AsyncSession, project: t.Project, name: str
) -> BackendInfo:
    for info in await list_backends(ctx, s, project):
        if info.name == name:
            return info
    raise ResourceNotExistsError(f"Backend {name} not found in project {project.name}")


async def get_backend_yaml(
    ctx: ServerContext, s: AsyncSession, project: t.Project, name: str
) -> BackendYAML:
    info = await get_backend(ctx, s, project, name)
    body = {"type": info.type, **{k: v for k, v in info.config.items() if k != "type"}}
    return BackendYAML(name=info.name, config_yaml=yaml.safe_dump(body, sort_keys=False))


def configurable_types() -> list[str]:
    return list(CONFIGURABLE_BACKENDS)


def refuse_write() -> None:
    raise ServerClientError(EDIT_THE_FILE)
