"""A full disk under the agent's jobs, noticed and survived.

Without this a job on a full filesystem never ends: its supervisor cannot write the result, the
agent cannot record the loss, every call about the host answers "internal agent error", and the
job stays `running` forever. So:

- each job directory holds a small reserve file, created with the job; the one write that must
  succeed on a full disk (the job's result) frees it and retries;
- a supervisor whose job's filesystem stays full past a grace period stops the job and fails it
  with "no space left on HOST", as does a job that fails while the disk is full;
- the agent answers a start that runs out of space with 507 and that message, writing nothing
  half (the next start, once there is space again, works as usual).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path
from typing import Any

from dstack.agent.util import write_json_atomic

RESERVE_FILE = ".space-reserve"
RESERVE_BYTES = 64 * 1024
# Below this much space for unprivileged writes, the filesystem counts as full.
FULL_BELOW_BYTES = 16 * 1024
GRACE_ENV = "DSTACK_AGENT_DISK_FULL_GRACE"
CHECK_EVERY_SECONDS = 1.0


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def no_space_message(path: Path) -> str:
    return f"no space left on {socket.gethostname()}: the filesystem of {path} is full"


def free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_full(path: Path) -> bool:
    free = free_bytes(path)
    return free is not None and free < FULL_BELOW_BYTES


def reserve(job_dir: Path) -> None:
    """Set aside the room the job's result will need (raises ENOSPC when there is none)."""
    with open(job_dir / RESERVE_FILE, "wb") as f:
        f.write(b"\0" * RESERVE_BYTES)
        f.flush()
        os.fsync(f.fileno())


def write_reserved(path: Path, data: Any) -> None:
    """Write a JSON file in a job directory, spending the job's reserve if the disk is full."""
    try:
        write_json_atomic(path, data)
    except OSError as e:
        reserve_file = path.parent / RESERVE_FILE
        if not is_disk_full(e) or not reserve_file.exists():
            raise
        reserve_file.unlink()
        write_json_atomic(path, data)


class DiskWatch:
    """Says when a job's filesystem has been full for longer than the grace period."""

    def __init__(self, path: Path, grace: float | None = None) -> None:
        self.path = path
        raw = os.environ.get(GRACE_ENV)
        self.grace = grace if grace is not None else float(raw) if raw else 10.0
        self.full_since: float | None = None
        self.checked_at = 0.0

    def note_full(self) -> None:
        """A write just failed for want of space (the job's output, for instance)."""
        if self.full_since is None:
            self.full_since = time.monotonic()

    def exhausted(self) -> bool:
        now = time.monotonic()
        if now - self.checked_at >= CHECK_EVERY_SECONDS:
            self.checked_at = now
            if is_full(self.path):
                self.note_full()
            else:
                self.full_since = None
        return self.full_since is not None and now - self.full_since >= self.grace

    def message(self) -> str:
        return no_space_message(self.path)
