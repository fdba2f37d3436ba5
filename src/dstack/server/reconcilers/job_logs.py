"""Copying a job's log from its agent to the server's store, page by page, on the job's
passes (`job_worker.py`): the server keeps every job's log, the agent only until the job is
removed from it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dstack.server.agent_client import AgentClient, JobState
from dstack.server.services import logs

LOG_PAGES_PER_PASS = 16


async def copy_logs(
    path: Path, client: AgentClient, job_id: str, agent_job: JobState | None, drain: bool
) -> None:
    """Copy the job's new log pages into `path`. None is asked for while the agent's job list
    says the log has not grown since the last copy: growth moves the list, whose long poll
    brings the job's pass back at once, so a running job that prints nothing costs no request.
    A drain (the job's last copy) stops at the page the agent says ends a finished job's log,
    without asking once more for an empty page. A page is written (and synced to disk) on a
    worker thread: the event loop that runs every pass does not wait on the disk."""
    offset = logs.agent_offset(path)
    if not drain and agent_job is not None and agent_job.get("log_bytes") == offset:
        return
    for _ in range(LOG_PAGES_PER_PASS * (8 if drain else 1)):
        page = await client.poll_logs(job_id, offset)
        entries = page.get("entries") or []
        after = int(page.get("next_offset", offset))
        if entries:
            await asyncio.to_thread(logs.append, path, entries, after)
        offset = after
        if not entries or page.get("finished"):
            break
