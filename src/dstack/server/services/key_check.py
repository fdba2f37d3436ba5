"""At start, before anything runs: every stored encrypted value must be readable with the keys
`config.yml` gives. A key removed too early, or a key whose secret changed, stops the server
naming the key and a value that needs it, instead of failing later at a job start or a backend
call with an unreadable credential."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ConfigurationError
from dstack.models.instances import InstanceStatus
from dstack.server.db import tables as t
from dstack.server.services.crypto import Box, DecryptionError


async def _stored(s: AsyncSession) -> AsyncIterator[tuple[str, str]]:
    """(what the value is, the stored value) for every encrypted column."""
    q = select(t.Secret.name, t.Project.name, t.Secret.value).join(
        t.Project, t.Project.id == t.Secret.project_id
    )
    for name, project, value in await s.execute(q):
        yield f"secret {name} of project {project}", value
    q = select(t.Backend.type, t.Project.name, t.Backend.auth).join(
        t.Project, t.Project.id == t.Backend.project_id
    )
    for btype, project, value in await s.execute(q):
        yield f"the credentials of backend {btype} of project {project}", value
    q = select(t.Project.name, t.Project.ssh_private_key).where(
        t.Project.ssh_private_key.is_not(None)
    )
    for project, value in await s.execute(q):
        yield f"the SSH key of project {project}", value
    q = select(t.Instance.name, t.Instance.agent_token_enc).where(
        t.Instance.agent_token_enc.is_not(None),
        t.Instance.status != InstanceStatus.TERMINATED.value,
    )
    for name, value in await s.execute(q):
        yield f"the agent token of instance {name}", value


async def check_stored_values(s: AsyncSession, box: Box, config_file: Path) -> None:
    """Raises `ConfigurationError` (naming `config.yml`) for the first value, per key, that
    the configured keys cannot read."""
    seen: set[tuple[str, str]] = set()
    async for what, value in _stored(s):
        key = box.key_of(value)
        if key in seen:
            continue
        seen.add(key)
        try:
            box.decrypt(value)
        except DecryptionError as e:
            raise ConfigurationError(
                f"{what}: {e.message}", path="encryption.keys", file=str(config_file)
            ) from None
