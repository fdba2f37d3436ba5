"""A project's secrets: stored encrypted with the server's box, listed by name, read in clear
only by `get` (managers and admins, checked by the router) and by the job reconciler when a job
starts (`resolve`). No value is ever logged, put in an event or in an error message."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ResourceNotExistsError, ServerClientError
from dstack.models.envs import interpolate_secrets, secret_references
from dstack.models.secrets import CreateOrUpdateSecretRequest, Secret
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.services import events
from dstack.server.services.crypto import Box


def _model(row: t.Secret, value: str | None = None) -> Secret:
    return Secret(id=row.id, name=row.name, value=value)


def _event(s: AsyncSession, row: t.Secret, message: str, actor: str) -> None:
    events.record(
        s,
        project_id=row.project_id,
        target_type="secret",
        target_id=row.id,
        target_name=row.name,
        message=message,
        now=utcnow(),
        actor=actor,
    )


async def _row(s: AsyncSession, project_id: str, name: str) -> t.Secret | None:
    q = select(t.Secret).where(t.Secret.project_id == project_id, t.Secret.name == name)
    return (await s.execute(q)).scalar_one_or_none()


async def list_secrets(s: AsyncSession, project: t.Project) -> list[Secret]:
    q = select(t.Secret).where(t.Secret.project_id == project.id).order_by(t.Secret.name)
    return [_model(r) for r in (await s.execute(q)).scalars()]


async def get_secret(s: AsyncSession, box: Box, project: t.Project, name: str) -> Secret:
    row = await _row(s, project.id, name)
    if row is None:
        raise ResourceNotExistsError(f"Secret {name} not found", code="resource_not_exists")
    return _model(row, box.decrypt(row.value))


async def create_or_update(
    s: AsyncSession, box: Box, project: t.Project, actor: str, name: str, value: str
) -> Secret:
    name, value = CreateOrUpdateSecretRequest(name=name, value=value).check()
    now = utcnow()
    row = await _row(s, project.id, name)
    if row is None:
        row = t.Secret(
            id=str(uuid.uuid4()),
            project_id=project.id,
            name=name,
            value=box.encrypt(value),
            created_at=now,
            updated_at=now,
        )
        s.add(row)
        _event(s, row, "Secret created", actor)
    else:
        row.value, row.updated_at = box.encrypt(value), now
        _event(s, row, "Secret updated", actor)
    try:
        await s.commit()
    except IntegrityError:  # created by a concurrent call: this one updates it
        await s.rollback()
        return await create_or_update(s, box, project, actor, name, value)
    return _model(row)


async def delete_secrets(s: AsyncSession, project: t.Project, actor: str, names: list[str]) -> None:
    """All or nothing: an unknown name refuses the whole call, naming it."""
    rows = []
    for name in dict.fromkeys(names):
        row = await _row(s, project.id, name)
        if row is None:
            raise ResourceNotExistsError(f"Secret {name} not found", code="resource_not_exists")
        rows.append(row)
    for row in rows:
        _event(s, row, "Secret deleted", actor)
    await s.execute(delete(t.Secret).where(t.Secret.id.in_([r.id for r in rows])))
    await s.commit()


async def missing(s: AsyncSession, project_id: str, names: Iterable[str]) -> list[str]:
    """The names a run refers to that the project has no secret for (refused at apply)."""
    wanted = sorted(set(names))
    if not wanted:
        return []
    q = select(t.Secret.name).where(t.Secret.project_id == project_id, t.Secret.name.in_(wanted))
    have = set((await s.execute(q)).scalars())
    return [n for n in wanted if n not in have]


async def resolve(
    s: AsyncSession, box: Box, project_id: str, names: Iterable[str]
) -> dict[str, str]:
    """Name -> value for a job about to start. A name deleted since the apply raises a
    `ServerClientError` naming it (the job fails with that message, never with the value)."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    q = select(t.Secret).where(t.Secret.project_id == project_id, t.Secret.name.in_(wanted))
    found = {r.name: box.decrypt(r.value) for r in (await s.execute(q)).scalars()}
    gone = [n for n in wanted if n not in found]
    if gone:
        raise ServerClientError(f"secret {', '.join(gone)} not found in the project")
    return found


def _secret_fields(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The mappings whose string values may refer to secrets: `env` and `registry_auth`."""
    return [m for m in (body.get("env"), body.get("registry_auth")) if isinstance(m, dict)]


def secret_names(body: dict[str, Any]) -> list[str]:
    """The secrets an agent job request refers to (`${{ secrets.NAME }}`), sorted."""
    names: set[str] = set()
    for mapping in _secret_fields(body):
        for value in mapping.values():
            if isinstance(value, str):
                names.update(secret_references(value))
    return sorted(names)


def with_secrets(body: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """A copy of the request with every reference replaced by its value. Only this copy, sent
    to the agent, ever holds them: the job's stored spec keeps `${{ secrets.NAME }}`."""
    out = dict(body)
    for key in ("env", "registry_auth"):
        if isinstance(body.get(key), dict):
            out[key] = {
                k: interpolate_secrets(v, values) if isinstance(v, str) else v
                for k, v in body[key].items()
            }
    return out


async def resolve_job(ctx: Any, project_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """The agent's job request with its secrets filled in (`ctx`: the ServerContext); the
    request unchanged when it names none. Raises `ServerClientError` naming a missing one."""
    names = secret_names(body)
    if not names:
        return body
    async with ctx.db.session() as s:
        values = await resolve(s, ctx.box, project_id, names)
    return with_secrets(body, values)


def run_secret_names(conf: Any) -> list[str]:
    """The secrets a run configuration refers to, in `env` and `registry_auth`."""
    values = [v for v in (getattr(conf, "env", None) or {}).values() if isinstance(v, str)]
    auth = getattr(conf, "registry_auth", None)
    if auth is not None:
        values += [v for v in auth.model_dump().values() if isinstance(v, str)]
    return sorted({n for v in values for n in secret_references(v)})


async def check_run_secrets(s: AsyncSession, project_id: str, conf: Any) -> None:
    """Refuse, at apply, a run that names a secret the project does not have."""
    gone = await missing(s, project_id, run_secret_names(conf))
    if gone:
        plural = "s" if len(gone) > 1 else ""
        raise ServerClientError(
            f"the configuration refers to secret{plural} {', '.join(gone)}, which the project "
            "does not have; create it with `dstack secret set NAME`",
            field="plan.run_spec.configuration.env",
        )
