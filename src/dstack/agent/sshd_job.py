"""The job's SSH server seen from its supervisor: started beside the job, stopped with it.

Why a thread of its own: preparing sshd, starting it and waiting until it listens takes
tens of milliseconds, and a one-second job must deliver its output and result without
waiting for it. The job may even end before the server is up: `stop()` can run at any point
of `start()`, and a lock orders the two, so nothing is written about the server after the
job's end and no server outlives it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from dstack.agent import docker, jobuser, notify, sshd
from dstack.agent.util import proc_start_time, read_json, write_json_atomic

SSH_LOG = "sshd.out"


class JobSshServer:
    def __init__(self, job_dir: Path, spec: dict[str, Any], in_docker: bool) -> None:
        self.dir = job_dir
        self.spec = spec
        self.docker = in_docker
        self.proc: subprocess.Popen[bytes] | None = None
        self.activity: sshd.ActivityTracker | None = None
        self._lock = threading.Lock()
        self._closed = False

    def start(self, job_env: dict[str, str]) -> None:
        """Start the server (in its own session: stopping the job's process group must not
        orphan live connections; they are killed with the server once the job has ended)
        and wait until it listens. Failures go to ssh.json for the user."""
        info = read_json(self.dir / sshd.SSH_FILE) or {}
        port = info.get("port")
        if not port:
            return
        container = None
        env = job_env
        if self.docker:
            container = (docker.container_name(self.spec["id"]), str(info.get("working_dir")))
            env = {k: os.environ[k] for k in sshd.DOCKER_CLIENT_ENV if k in os.environ}
        with self._lock:
            if self._closed:
                return
            error = self._spawn(int(port), env, container)
        if error is not None or self.proc is None:
            self._failed(info, error or "the job's SSH server did not start")
            return
        error = sshd.wait_listening(self.proc, int(port), self.dir / sshd.SSH_DIR / "sshd.log")
        if error is not None:
            self._failed(info, error)
            return
        activity = sshd.ActivityTracker(self.dir / sshd.ACTIVITY_FILE, int(port))
        with self._lock:
            if self._closed:
                return
            # `ssh_ready` in the job's state: the CLI attaches only once this is written.
            write_json_atomic(self.dir / sshd.SSH_FILE, dict(info, listening=True))
            activity.check(write_json_atomic)
            self.activity = activity
        notify.send(self.dir)  # the agent's job list now shows the server up

    def _spawn(
        self, port: int, env: dict[str, str], container: tuple[str, str] | None
    ) -> str | None:
        log = open(self.dir / SSH_LOG, "ab")  # noqa: SIM115 - the child keeps it
        try:
            keys = self.spec.get("ssh_keys") or []
            ident = None if self.docker else jobuser.identity(self.dir)
            argv = sshd.prepare(self.dir, port, keys, env, container, ident)
            self.proc = subprocess.Popen(
                argv,
                cwd=str(self.dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError) as e:
            return f"cannot start the job's SSH server: {e}"
        finally:
            log.close()
        pid_info = {"pid": self.proc.pid, "proc_start": proc_start_time(self.proc.pid)}
        write_json_atomic(self.dir / sshd.SSHD_PID_FILE, pid_info)
        return None

    def _failed(self, info: dict[str, Any], error: str) -> None:
        with self._lock:
            if not self._closed:  # after the job's end a failure is no news
                write_json_atomic(self.dir / sshd.SSH_FILE, dict(info, port=None, error=error))

    def check_activity(self) -> None:
        activity = self.activity
        if activity is not None:
            activity.check(write_json_atomic)

    def stop(self) -> None:
        with self._lock:
            self._closed = True
        if self.proc is not None:
            sshd.kill_tree(self.proc.pid)
            with contextlib.suppress(subprocess.SubprocessError):
                self.proc.wait(5)
