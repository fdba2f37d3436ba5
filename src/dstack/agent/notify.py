"""Supervisors tell their agent that a job changed, so the agent's long-polled job list
(LIST_JOBS with `wait`) answers at once instead of on the server's next poll.

Why a datagram socket: it is fire-and-forget (a supervisor never blocks on, or fails because
of, an agent that is restarting or gone) and standard library only. The name is in Linux's
abstract namespace, derived from the agent's home: no path length limit, no file to clean up,
and a supervisor finds it from its job directory alone (`<home>/jobs/<id>`). Elsewhere nothing
is sent and the server's poll alone notices changes.

A datagram carries only a job id and merely wakes the agent, which then reads the job's files
as it always does: a stray or forged datagram costs one extra look, never a wrong state.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from dstack.agent.protocol import JOB_ID_RE

log = logging.getLogger("dstack.agent")

SUPPORTED = sys.platform.startswith("linux")
MAX_DATAGRAM = 256


def address(home: Path) -> str:
    digest = hashlib.sha256(str(Path(home).absolute()).encode()).hexdigest()[:32]
    return "\0dstack-agent-" + digest


def send(job_dir: Path) -> None:
    """Tell the agent of `job_dir` (`<home>/jobs/<id>`) that the job changed; never raises."""
    if not SUPPORTED:
        return
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)  # a full queue drops the note: the agent is awake anyway
        s.sendto(job_dir.name.encode()[:MAX_DATAGRAM], address(job_dir.parent.parent))


class Listener:
    """Receives notes on a daemon thread and calls `on_note(job_id)` for each valid one."""

    def __init__(self, home: Path, on_note: Callable[[str], None]) -> None:
        self._on_note = on_note
        self._sock: socket.socket | None = None
        if not SUPPORTED:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(address(home))
        except OSError as e:  # another process holds the name: only the poll then
            log.warning("job change notes disabled: %s", e)
            sock.close()
            return
        self._sock = sock
        threading.Thread(target=self._loop, name="notes", daemon=True).start()

    def _loop(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data = sock.recv(MAX_DATAGRAM)
            except OSError:
                return  # closed
            job_id = data.decode("ascii", "replace")
            if JOB_ID_RE.match(job_id):
                self._on_note(job_id)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class Changes:
    """A cursor over "something about this host's jobs changed", for LIST_JOBS's long poll.

    The cursor is `<epoch>:<count>`: the epoch is new with every agent process, so a server
    holding a cursor from an agent that has since restarted is answered at once. A caller
    reads the cursor before listing the jobs: a change during the listing moves the cursor,
    and the caller's next wait returns at once."""

    def __init__(self) -> None:
        self._epoch = uuid.uuid4().hex[:12]
        self._count = 0
        self._cond = threading.Condition()

    def bump(self, _job_id: str | None = None) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def cursor(self) -> str:
        with self._cond:
            return f"{self._epoch}:{self._count}"

    def wait(self, after: str | None, timeout: float) -> str:
        """The cursor once it differs from `after` (at once for None or another epoch's), or
        after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while f"{self._epoch}:{self._count}" == after:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return f"{self._epoch}:{self._count}"
