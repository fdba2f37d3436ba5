"""The SSH relay: a WebSocket from the CLI (`dstack ssh-proxy`, the `ProxyCommand` of a run's
`Host` block) to a running job's SSH server, bytes relayed both ways.

Why the server relays: the server always reaches the job's host (that is how it runs the job),
while the user's machine may not — a host behind a fleet's `proxy_jump` bastion the user has no
login on, a private address, or a local-backend server on another machine. The SSH session stays
end to end between the user's `ssh` and the job's sshd; the server only carries bytes.

Each backend opens the TCP stream to a port on its hosts its own way (`Compute.open_stream`:
this machine's loopback, or a direct-tcpip channel over a host's pooled SSH connection). The
database is read in one short session before the relay starts, so a
long SSH session holds no database connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.runs import JobStatus, RunStatus
from dstack.server.db import tables as t
from dstack.server.services.context import ServerContext
from dstack.server.services.hosts import backend_of, open_stream

log = logging.getLogger(__name__)

JOB_SSH_PORT = "10022"  # the job's sshd as a container port in job_runtime_data.ports
CHUNK = 64 * 1024
CLOSE_TIMEOUT = 5.0


class RelayRefused(Exception):
    """Why no relay was opened; `status` is the HTTP status the handshake is answered with."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True)
class SSHTarget:
    job: t.Job
    instance: t.Instance
    port: int  # the job's sshd on its host


async def find_target(
    s: AsyncSession, project: t.Project, run_name: str, replica_num: int, job_num: int
) -> SSHTarget:
    """The running job's sshd, or a refusal that says why there is none."""
    run = (
        await s.execute(
            select(t.Run)
            .where(t.Run.project_id == project.id, t.Run.run_name == run_name)
            .where(t.Run.deleted.is_(False))
            .order_by(t.Run.submitted_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if run is None:
        raise RelayRefused(
            404, f"Run {run_name} not found in project {project.name}", "resource_not_exists"
        )
    if run.status == RunStatus.TERMINATING or RunStatus(run.status).is_finished():
        raise RelayRefused(
            409, f"Run {run_name} is {run.status}; it no longer accepts SSH", "run_not_running"
        )
    job = await _latest_job(s, run.id, replica_num, job_num)
    if job is None:
        raise RelayRefused(
            404,
            f"Run {run_name} has no job {job_num} in replica {replica_num}",
            "resource_not_exists",
        )
    what = f"Job {job.job_name} of run {run_name}"
    if job.status != JobStatus.RUNNING.value:
        raise RelayRefused(
            409, f"{what} is {job.status}; SSH is available while it runs", "job_not_running"
        )
    ports = json.loads(job.job_runtime_data or "{}").get("ports") or {}
    port = ports.get(JOB_SSH_PORT)
    instance = await s.get(t.Instance, job.instance_id) if job.instance_id else None
    if not port or instance is None:
        raise RelayRefused(409, f"{what} has no SSH server", "job_has_no_ssh")
    return SSHTarget(job=job, instance=instance, port=int(port))


async def _latest_job(s: AsyncSession, run_id: str, replica_num: int, job_num: int) -> t.Job | None:
    return (
        await s.execute(
            select(t.Job)
            .where(t.Job.run_id == run_id, t.Job.replica_num == replica_num)
            .where(t.Job.job_num == job_num)
            .order_by(t.Job.submission_num.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def open_job_stream(
    ctx: ServerContext,
    project: t.Project,
    run_name: str,
    replica_num: int = 0,
    job_num: int = 0,
) -> tuple[Any, Any]:
    """Check the job, then open (reader, writer) to its sshd; RelayRefused if not. Access to
    `project` was decided by the app's gate (`routers/deps.enforce`)."""
    async with ctx.db.session() as s:
        target = await find_target(s, project, run_name, replica_num, job_num)
    if backend_of(ctx, target.instance) is None:
        raise RelayRefused(
            409,
            f"the server cannot relay SSH to {target.instance.backend} instances",
            "not_supported",
        )
    try:
        return await open_stream(ctx, target.instance, target.port)
    except Exception as e:  # noqa: BLE001 - every backend's failure is one answer: 502
        log.info("SSH relay to %s failed: %s", target.job.job_name, e)
        raise RelayRefused(
            502, f"cannot reach the SSH server of job {target.job.job_name}: {e}", "bad_gateway"
        ) from e


Receive = Callable[[], Awaitable[bytes | None]]  # None: the client went away
Send = Callable[[bytes], Awaitable[None]]


async def relay(receive: Receive, send: Send, reader: Any, writer: Any) -> None:
    """Copy bytes both ways until either side ends, then close the stream (which closes an SSH
    channel too): a session ended by either side leaves nothing open on the host."""
    up = asyncio.create_task(_client_to_job(receive, writer))
    down = asyncio.create_task(_job_to_client(reader, send))
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        await close_stream(writer)


async def _client_to_job(receive: Receive, writer: Any) -> None:
    """An empty message is the client's end of input: shut the job side's write half (TCP
    half-close) and wait for the job to finish answering and close."""
    with contextlib.suppress(OSError, ConnectionError, EOFError):
        while (data := await receive()) is not None:
            if data:
                writer.write(data)
                await writer.drain()
            elif writer.can_write_eof():
                writer.write_eof()
        return
    await asyncio.Event().wait()  # a failed write: the job side's read half may still answer


async def _job_to_client(reader: Any, send: Send) -> None:
    with contextlib.suppress(OSError, ConnectionError, EOFError, RuntimeError):
        while data := await reader.read(CHUNK):
            await send(data)


async def close_stream(writer: Any) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
