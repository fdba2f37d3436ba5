"""The project's SSH key pair: the key the server uses to reach every host and job of the
project (SSH fleets, tunnels to agents, `ssh <run>`). Generated once, on first use; the
private key is stored encrypted."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from dstack.server.db import tables as t
from dstack.server.services.crypto import Box


def generate_keypair(comment: str) -> tuple[str, str]:
    """(private key in OpenSSH PEM, public key line `ssh-ed25519 AAAA... comment`)."""
    # Imported here: key serialization (~15 ms of imports) is not needed to start the server.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, f"{public} {comment}"


async def project_keypair(s: AsyncSession, box: Box, project: t.Project) -> tuple[str, str]:
    """The project's (private, public) key, created and saved (uncommitted) if missing."""
    if project.ssh_private_key and project.ssh_public_key:
        return box.decrypt(project.ssh_private_key), project.ssh_public_key
    private, public = generate_keypair(f"dstack-project-{project.name}")
    project.ssh_private_key = box.encrypt(private)
    project.ssh_public_key = public
    await s.flush()
    return private, public
