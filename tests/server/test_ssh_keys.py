from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.db.migrate import migrate
from dstack.server.db.session import Database
from dstack.server.services.crypto import Box
from dstack.server.services.ssh_keys import generate_keypair, project_keypair


def test_generated_pair_matches_and_loads() -> None:
    private, public = generate_keypair("dstack-project-main")
    key = serialization.load_ssh_private_key(private.encode(), password=None)
    expected = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    assert public == f"{expected} dstack-project-main"
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


def test_project_keypair_is_created_once_and_stored_encrypted(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
        await migrate(db.engine)
        box = Box(tmp_path / "key")
        async with db.session() as s:
            user = t.User(id=str(uuid.uuid4()), name="u", token_hash="h", created_at=utcnow())
            s.add(user)
            await s.flush()
            project = t.Project(
                id=str(uuid.uuid4()), name="p", owner_id=user.id, created_at=utcnow()
            )
            s.add(project)
            first = await project_keypair(s, box, project)
            await s.commit()
            assert first[0] not in project.ssh_private_key  # never stored in the clear
            again = await project_keypair(s, box, project)
            assert again == first
        await db.close()

    asyncio.run(scenario())
