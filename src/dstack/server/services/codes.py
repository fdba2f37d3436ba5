"""Code archives the CLI uploads: stored once per (project, sha256), referenced by runs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ServerClientError
from dstack.models.runs import JobSpec, RunSpec
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.services.crypto import Box
from dstack.server.services.repos import agent_repo


class CodeTooLargeError(ServerClientError):
    """The archive exceeds DSTACK_SERVER_CODE_UPLOAD_LIMIT (HTTP 413)."""


def too_large_message(size: int, limit: int) -> str:
    return (
        f"The code archive is {size / 1048576:.1f} MiB, over the server's limit of "
        f"{limit / 1048576:.1f} MiB. Exclude large files with .gitignore or .dstackignore, "
        "or raise DSTACK_SERVER_CODE_UPLOAD_LIMIT on the server."
    )


async def store_code(s: AsyncSession, project: t.Project, blob: bytes, limit: int) -> str:
    if limit and len(blob) > limit:
        raise CodeTooLargeError(too_large_message(len(blob), limit), code="code_too_large")
    digest = hashlib.sha256(blob).hexdigest()
    if await s.get(t.Code, (project.id, digest)) is None:
        s.add(t.Code(project_id=project.id, hash=digest, blob=blob, created_at=utcnow()))
        try:
            await s.commit()
        except IntegrityError:
            # A concurrent upload of the same archive won the insert: the row it wrote holds
            # these very bytes (the key is their hash), so this upload is done too.
            await s.rollback()
    return digest


@dataclass
class StartPayload:
    """What a job's start request carries besides its spec: the code with the `files`
    archives after it, the spec fields that describe them and the repo to clone (credentials
    decrypted), or why the job cannot start."""

    code: bytes
    fields: dict[str, Any]
    error: str | None = None


async def start_payload(
    s: AsyncSession, box: Box, project_id: str, run: t.Run, job: JobSpec
) -> StartPayload:
    code = await load_code(s, project_id, job.repo_code_hash) if job.repo_code_hash else None
    run_spec = RunSpec.model_validate_json(run.run_spec)
    archives = [(f.id, f.path) for f in run_spec.file_archives]
    entries, blobs, error = await load_file_archives(s, project_id, archives)
    fields = {
        "files": entries,
        "home_dir": run_spec.configuration.get("home_dir"),
        "repo": agent_repo(job, run_spec, box),
    }
    return StartPayload((code or b"") + blobs, fields, error)


async def load_file_archives(
    s: AsyncSession, project_id: str, archives: list[tuple[str, str]]
) -> tuple[list[dict[str, object]], bytes, str | None]:
    """The run's `files` as the agent's start frame carries them after the code: each
    archive's target path and length, and the archives themselves, in order; or why not (an
    archive is missing)."""
    entries: list[dict[str, object]] = []
    blobs = []
    for digest, path in archives:
        blob = await load_code(s, project_id, digest)
        if blob is None:
            return [], b"", f"files: the archive for {path} was not uploaded"
        entries.append({"path": path, "length": len(blob)})
        blobs.append(blob)
    return entries, b"".join(blobs), None


async def load_code(s: AsyncSession, project_id: str, digest: str) -> bytes | None:
    row = await s.get(t.Code, (project_id, digest))
    return row.blob if row else None
