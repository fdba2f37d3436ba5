"""A fork server for job supervisors: one long-lived process per agent that has the supervisor
code loaded and forks a supervisor per job.

Why: a fresh interpreter per job (start-up and imports) cost every job ~50 ms of CPU and ~0.1 s
of latency before its command ran; a fork costs a few milliseconds, and the children share
the loaded code's memory. Why not fork the agent itself: it runs threads (HTTP, metrics,
notes), and forking a threaded process can leave a child holding a lock forever. This process
stays single-threaded; only its children (the supervisors) start threads.

Protocol on stdin/stdout, one line each way: the agent writes a job directory, the spawner
answers the supervisor's pid (or `error <text>`). Each supervisor is in its own session (it
outlives both the agent and this process) with stdout/stderr to the job's supervisor log,
exactly as a supervisor started by the agent directly. The spawner ignores SIGCHLD so its
finished children are reaped by the kernel; each child restores the default first (its own
children's exit codes must be waited for). EOF on stdin (the agent went away) ends it.

Usage: python3 -s -S -m dstack.agent.spawner
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback

from dstack.agent.util import SUPERVISOR_LOG

log = logging.getLogger("dstack.agent")


def _child(job_dir: str) -> None:
    """In the forked child: become the job's supervisor; never returns."""
    from dstack.agent import supervisor  # loaded once, in the spawner, before any fork

    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        os.chdir(job_dir)
        null = os.open(os.devnull, os.O_RDONLY)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        log = os.open(os.path.join(job_dir, SUPERVISOR_LOG), flags, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1 << 16)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own descriptors
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        code = supervisor.main([job_dir])
    except BaseException:  # noqa: BLE001 - whatever it was goes to the supervisor log
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> int:
    from dstack.agent import supervisor  # noqa: F401 - loaded once here; forks share it

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent's Ctrl+C is not ours
    for line in sys.stdin:
        job_dir = line.rstrip("\n")
        if not os.path.isdir(job_dir):
            answer = f"error no such job directory: {job_dir}"
        else:
            try:
                pid = os.fork()
            except OSError as e:
                answer = f"error fork: {e}"
            else:
                if pid == 0:
                    _child(job_dir)
                answer = str(pid)
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve())


class Spawner:
    """The agent's end: starts the fork server on first use, asks it for supervisors, and
    says None when it cannot (the caller then starts the supervisor as a new interpreter)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self._argv = argv
        self._env = env
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def spawn(self, job_dir: str) -> int | None:
        with self._lock:
            for _ in range(2):  # a spawner that died is replaced once
                proc = self._running()
                if proc is None:
                    return None
                try:
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(job_dir + "\n")
                    proc.stdin.flush()
                    answer = proc.stdout.readline().strip()
                except (OSError, ValueError):
                    answer = ""
                if answer.isdigit():
                    return int(answer)
                if answer.startswith("error"):
                    log.warning("spawner: %s", answer)
                    return None
                self._stop()
            return None

    def _running(self) -> subprocess.Popen[str] | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        try:
            self._proc = subprocess.Popen(
                self._argv, env=self._env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, bufsize=1, close_fds=True,
                start_new_session=True,
            )
        except OSError as e:
            log.warning("cannot start the supervisor spawner: %s", e)
            self._proc = None
        return self._proc

    def _stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.SubprocessError):
                self._proc.wait(5)
            self._proc = None

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()  # EOF: it exits; its supervisors live on
            self._proc = None
