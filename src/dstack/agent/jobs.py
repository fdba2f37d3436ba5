"""The agent's job store: every operation reads or writes the job's directory.

The agent keeps no job state in memory that matters; supervisors own running jobs,
so the agent may be killed and restarted at any moment.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import IO, Any

from dstack.agent import docker, files, gpus, jobuser, notify, ports, pyenv, sshd, volumes
from dstack.agent import protocol as p
from dstack.agent.diskspace import reserve, write_reserved
from dstack.agent.gpus import GPUS_FILE
from dstack.agent.hostinfo import GpuCache
from dstack.agent.logs import LogWriter, read_page
from dstack.agent.protocol import JOB_ID_RE, JobState
from dstack.agent.spawner import Spawner
from dstack.agent.spec import BadRequest, validate_spec
from dstack.agent.state import SUPERVISOR_LOST, derive_state, is_finished
from dstack.agent.tarsafe import UnsafeArchive, unpack_code
from dstack.agent.util import (
    CHILD_FILE,
    CODE_DIR,
    LOGS_FILE,
    PORTS_FILE,
    READY_FILE,
    RESULT_FILE,
    SPEC_FILE,
    STOP_FILE,
    SUPERVISOR_FILE,
    SUPERVISOR_LOG,
    now_iso,
    pid_alive,
    proc_start_time,
    read_json,
    write_json_atomic,
)

log = logging.getLogger("dstack.agent")

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPOOL_CHUNK = 1024 * 1024


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    pass


class JobStore:
    def __init__(self, home: Path) -> None:
        self.root = home / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._job_locks: dict[str, threading.Lock] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._gpus = GpuCache()
        self.changes = notify.Changes()
        spawner_argv = [sys.executable, "-s", "-S", "-m", "dstack.agent.spawner"]
        self._spawner = Spawner(spawner_argv, _supervisor_env())
        # Warm it now: probing GPUs can take a second, which `run` should not pay.
        threading.Thread(target=self._gpus.get, daemon=True).start()

    def close(self) -> None:
        self._spawner.close()

    # --- helpers -------------------------------------------------------------------
    def _dir(self, job_id: str) -> Path:
        if not JOB_ID_RE.match(job_id):
            raise NotFound(f"job {job_id!r} not found")
        path = self.root / job_id
        if not (path / SPEC_FILE).is_file():
            raise NotFound(f"job {job_id!r} not found")
        return path

    def _job_lock(self, job_id: str) -> threading.Lock:
        with self._lock:
            return self._job_locks.setdefault(job_id, threading.Lock())

    def _alive(self, job_id: str, supervisor: dict[str, Any]) -> bool:
        child = self._children.get(job_id)
        if child is not None and child.poll() is not None:
            self._children.pop(job_id, None)  # reaped: no zombie keeps looking alive
            return False
        return pid_alive(int(supervisor.get("pid", 0)), supervisor.get("proc_start"))

    def _state_at(self, path: Path) -> JobState:
        spec = read_json(path / SPEC_FILE)
        if not isinstance(spec, dict):
            raise NotFound(f"job {path.name!r} not found")
        supervisor = read_json(path / SUPERVISOR_FILE)
        alive = bool(supervisor) and self._alive(path.name, supervisor)
        result = read_json(path / RESULT_FILE)
        if supervisor and not alive and result is None:
            result = self._record_lost(path, spec)
        try:
            log_bytes = (path / LOGS_FILE).stat().st_size
        except OSError:
            log_bytes = 0
        return derive_state(
            spec,
            supervisor,
            alive,
            result,
            read_json(path / PORTS_FILE),
            log_bytes,
            read_json(path / STOP_FILE),
            read_json(path / sshd.SSH_FILE),
            read_json(path / sshd.ACTIVITY_FILE),
            read_json(path / ports.LISTEN_FILE),
        )

    def _record_lost(self, path: Path, spec: dict[str, Any]) -> dict[str, Any]:
        """A dead supervisor without a result can never write one: record the loss once
        (so the state is stable) and kill what is left of the job."""
        message = SUPERVISOR_LOST
        output = _tail(path / SUPERVISOR_LOG)
        if output:
            message += " Supervisor output:\n" + output
        result = {
            "status": p.FAILED,
            "exit_status": None,
            "termination_reason": p.EXECUTOR_ERROR,
            "termination_message": message,
            "finished_at": now_iso(),
        }
        try:
            write_reserved(path / RESULT_FILE, result)
        except OSError as e:
            # Not kept (recorded again on the next look), but the host still answers.
            log.warning("job %s: cannot record its loss: %s", spec["id"], e)
        child = read_json(path / CHILD_FILE) or {}
        pid = int(child.get("pid", 0))
        if pid_alive(pid, child.get("proc_start")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        sshd_info = read_json(path / sshd.SSHD_PID_FILE) or {}
        if pid_alive(int(sshd_info.get("pid", 0)), sshd_info.get("proc_start")):
            sshd.kill_tree(int(sshd_info["pid"]))
        if spec.get("runtime") == "docker":
            threading.Thread(
                target=docker.docker_cmd,
                args=(["kill", docker.container_name(spec["id"])],),
                daemon=True,
            ).start()
        log.warning("job %s: supervisor lost; recorded executor_error", spec["id"])
        return result

    # --- API -----------------------------------------------------------------------
    def state(self, job_id: str) -> JobState:
        return self._state_at(self._dir(job_id))

    def list(self) -> list[JobState]:
        states: list[JobState] = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith("."):
                continue
            try:
                states.append(self._state_at(path))
            except NotFound:
                continue
        states.sort(key=lambda s: s.get("submitted_at") or "")
        return states

    def start(self, body: Any, code: IO[bytes], length: int) -> JobState:
        """Create the job with its code and run it, in one idempotent step keyed by its id.

        The server may send the same start again (it crashed, or the answer was lost): the
        same spec and code return the job as it is now and never start it twice; a different
        spec or code under that id is a Conflict. A job is created whole (spec and unpacked
        code appear together under its id), so a crash leaves either nothing or a job that a
        repeated start runs."""
        spec = validate_spec(body)
        job_id = spec["id"]
        with tempfile.TemporaryFile(dir=str(self.root)) as spool:
            spec["code_sha256"] = _spool(code, spool, length)
            spool.seek(0)
            with self._job_lock(job_id):
                path = self.root / job_id
                existing = read_json(path / SPEC_FILE)
                if isinstance(existing, dict):
                    _check_same(job_id, existing, spec)
                else:
                    self._create(path, spec, spool, length)
            return self._run(job_id, path)

    def _create(self, path: Path, spec: dict[str, Any], code: IO[bytes], length: int) -> None:
        spec["submitted_at"] = now_iso()
        tmp = self.root / f".new-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            code_length = length - files.total_length(spec)
            if code_length < 0:
                raise BadRequest("files: longer than the body")
            if code_length and code_length < length:
                with files.copy_range(code, code_length) as part:
                    unpack_code(part, tmp / CODE_DIR)
            elif code_length:
                unpack_code(code, tmp / CODE_DIR)
            else:
                (tmp / CODE_DIR).mkdir()
            if code_length < length:
                try:
                    files.unpack(code, code_length, spec, tmp)
                except (UnsafeArchive, files.FilesError) as e:
                    raise BadRequest(f"files: {e}") from None
            reserve(tmp)  # the room its result needs, should the disk fill up meanwhile
            write_json_atomic(tmp / SPEC_FILE, spec, mode=0o600)
            shutil.rmtree(path, ignore_errors=True)  # a leftover without spec.json
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("job %s: created (%s runtime)", spec["id"], spec["runtime"])

    def _run(self, job_id: str, path: Path) -> JobState:
        with self._job_lock(job_id), self._lock:
            state = self._state_at(path)
            if state["status"] != p.SUBMITTED:
                return state  # started (or stopped) before: never twice
            (path / CODE_DIR).mkdir(exist_ok=True)
            if not self._assign_listen_port(path) or not self._prepare_runtime(path):
                return self._state_at(path)
            self._assign_gpus(path)
            self._assign_ssh(path)
            self._spawn_supervisor(job_id, path)
            self.changes.bump()
            return self._state_at(path)

    def _assign_listen_port(self, path: Path) -> bool:
        """Choose the app's port before anything starts (under the store lock, so two jobs
        starting at once never pick the same one); when it is taken the job fails now with
        `ports_binding_failed`, instead of an app that dies on a bind error."""
        spec = read_json(path / SPEC_FILE) or {}
        host = spec.get("host_label") or socket.gethostname()
        error = ports.assign(self.root, path, spec, host)
        if error is None:
            return True
        _fail_before_start(path, p.PORTS_BINDING_FAILED, error)
        return False

    def _prepare_runtime(self, path: Path) -> bool:
        """The job's `user` and `python` on this host, resolved before anything runs: a user or
        a Python the host lacks fails the job now, saying so, instead of running it otherwise."""
        spec = read_json(path / SPEC_FILE) or {}
        try:
            jobuser.prepare(path, spec)
            pyenv.prepare(path, spec)
        except (jobuser.UserError, pyenv.PythonError) as e:
            _fail_before_start(path, p.EXECUTOR_ERROR, str(e))
            return False
        except OSError as e:
            _fail_before_start(path, p.EXECUTOR_ERROR, f"cannot prepare the job: {e}")
            return False
        return True

    def _assign_gpus(self, path: Path) -> None:
        spec = read_json(path / SPEC_FILE) or {}
        count = int(spec.get("gpus") or 0)
        if count < 0:
            return  # every GPU: nothing to hide
        host_gpus = self._gpus.get()
        if not host_gpus:
            return
        if count == 0:  # none: an empty assignment hides them all
            write_json_atomic(path / GPUS_FILE, gpus.assignment(host_gpus, []))
            return
        busy: set[int] = set()
        for other in self.root.iterdir():
            if other == path or other.name.startswith(".") or (other / RESULT_FILE).exists():
                continue
            held = read_json(other / GPUS_FILE)
            if isinstance(held, dict) and (other / SUPERVISOR_FILE).exists():
                busy.update(held.get("indices") or [])
        indices = gpus.allocate(host_gpus, busy, count)
        write_json_atomic(path / GPUS_FILE, gpus.assignment(host_gpus, indices))

    def _assign_ssh(self, path: Path) -> None:
        """Pick the job's SSH port now, so the answer to `run` already tells the server where
        the job's SSH server will listen (the supervisor starts it on this port)."""
        from dstack.agent.supervisor import process_workdir

        spec = read_json(path / SPEC_FILE) or {}
        if spec.get("runtime") == "docker":
            workdir = docker.container_workdir(spec.get("working_dir"))
        else:
            workdir = str(process_workdir(path / CODE_DIR, spec.get("working_dir")))
        info: dict[str, Any] = {"working_dir": workdir}
        try:
            sshd.authorize_on_host(spec["id"], spec.get("host_ssh_keys") or [])
        except OSError as e:
            log.warning("job %s: cannot authorize host SSH keys: %s", spec["id"], e)
        error = sshd.availability(spec)
        if error is None:
            info.update(port=sshd.free_port(), user=sshd.current_user())
        else:
            info["error"] = error
        write_json_atomic(path / sshd.SSH_FILE, info)

    def _spawn_supervisor(self, job_id: str, path: Path) -> None:
        pid = self._spawner.spawn(str(path))  # a fork of the loaded supervisor (spawner.py)
        if pid is None:
            with open(path / SUPERVISOR_LOG, "ab") as out:
                child = subprocess.Popen(
                    [sys.executable, "-s", "-m", "dstack.agent.supervisor", str(path)],
                    cwd=str(path),
                    env=_supervisor_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                    close_fds=True,
                )
            self._children[job_id] = child
            pid = child.pid
        info = {"pid": pid, "proc_start": proc_start_time(pid), "started_at": now_iso()}
        write_json_atomic(path / SUPERVISOR_FILE, info)
        log.info("job %s: started, supervisor pid %s", job_id, pid)

    def stop(
        self, job_id: str, abort: bool, reason: str | None, message: str | None = None
    ) -> JobState:
        path = self._dir(job_id)
        reason = reason or p.TERMINATED_BY_SERVER
        with self._lock:
            state = self._state_at(path)
            if is_finished(state):
                return state
            if state["status"] == p.SUBMITTED:
                result = {
                    "status": p.TERMINATED,
                    "exit_status": None,
                    "termination_reason": reason,
                    "termination_message": message,
                    "finished_at": now_iso(),
                }
                write_json_atomic(path / RESULT_FILE, result)
                return self._state_at(path)
            previous = read_json(path / STOP_FILE) or {}
            request = {
                "abort": abort or bool(previous.get("abort")),
                "reason": previous.get("reason") or reason,
                "message": previous.get("message") or message,
                "requested_at": previous.get("requested_at") or now_iso(),
            }
            write_json_atomic(path / STOP_FILE, request)
            self.changes.bump()
            log.info("job %s: stop requested (abort=%s, reason=%s)", job_id, abort, reason)
            self._notify(path)
            return self._state_at(path)

    def _notify(self, path: Path) -> None:
        """Signal only a supervisor that has its handlers installed (it wrote READY_FILE);
        one that has not yet will read the stop file when its loop starts."""
        if not (path / READY_FILE).exists():
            return
        supervisor = read_json(path / SUPERVISOR_FILE) or {}
        pid = int(supervisor.get("pid", 0))
        if pid_alive(pid, supervisor.get("proc_start")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGUSR1)

    def logs(self, job_id: str, offset: int, limit: int) -> dict[str, Any]:
        path = self._dir(job_id)
        finished = is_finished(self._state_at(path))  # before reading: no later growth missed
        entries, next_offset, size = read_page(path / LOGS_FILE, offset, limit)
        return {
            "entries": entries,
            "next_offset": next_offset,
            "finished": finished and next_offset >= size,
        }

    def remove(self, job_id: str) -> dict[str, Any]:
        path = self._dir(job_id)
        with self._job_lock(job_id), self._lock:
            state = self._state_at(path)
            if not is_finished(state):
                raise Conflict(f"job {job_id!r} is {state['status']}; stop it first")
            if state["runtime"] == "docker":
                docker.remove_container(job_id)
            with contextlib.suppress(OSError):
                sshd.revoke_on_host(job_id)
            pyenv.cleanup(path)
            files.cleanup(path)
            jobuser.cleanup(path)
            trash = self.root / f".removed-{uuid.uuid4().hex}"
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
            self._children.pop(job_id, None)
            self._job_locks.pop(job_id, None)
            self.changes.bump()
            log.info("job %s: removed", job_id)
        return {"id": job_id, "removed": True}

    def delete_volume_dir(self, volume_id: str) -> dict[str, Any]:
        """Remove a directory volume's data, unless a job that has not finished mounts it."""
        if not JOB_ID_RE.match(volume_id):
            raise BadRequest("id: not a volume id")
        with self._lock:
            for state in self.list():
                if is_finished(state):
                    continue
                spec = read_json(self.root / state["id"] / SPEC_FILE) or {}
                if any(v.get("volume_id") == volume_id for v in spec.get("volumes") or []):
                    raise Conflict(f"volume {volume_id} is in use by job {state['id']}")
            deleted = volumes.delete_directory(volume_id)
        log.info("volume %s: directory %s", volume_id, "deleted" if deleted else "absent")
        return {"volume_id": volume_id, "deleted": deleted}


def _supervisor_env() -> dict[str, str]:
    """The agent's environment without its token (jobs never see it), finding this package."""
    env = {k: v for k, v in os.environ.items() if k != "DSTACK_AGENT_TOKEN"}
    env["PYTHONPATH"] = PACKAGE_ROOT
    return env


def _fail_before_start(path: Path, reason: str, error: str) -> None:
    """The job never runs: the reason goes to its stderr log and its result."""
    writer = LogWriter(path / LOGS_FILE)
    try:
        writer.write("stderr", (error + "\n").encode())
    finally:
        writer.close()
    result = {
        "status": p.FAILED,
        "exit_status": None,
        "termination_reason": reason,
        "termination_message": error,
        "finished_at": now_iso(),
    }
    write_json_atomic(path / RESULT_FILE, result)
    log.warning("job %s: %s", path.name, error)


def _spool(src: IO[bytes], dst: IO[bytes], length: int) -> str:
    """Copy exactly `length` bytes (the whole request body is read, so the connection stays
    usable) and return their sha256: a repeated start must bring the same code."""
    digest = hashlib.sha256()
    remaining = length
    while remaining > 0:
        chunk = src.read(min(SPOOL_CHUNK, remaining))
        if not chunk:
            raise BadRequest("body: shorter than its Content-Length")
        digest.update(chunk)
        dst.write(chunk)
        remaining -= len(chunk)
    return digest.hexdigest()


# Fields the agent adds to a stored spec: not part of what the server asked for.
_STORED_ONLY = ("submitted_at",)


def _check_same(job_id: str, stored: dict[str, Any], spec: dict[str, Any]) -> None:
    """A start of an existing job must ask for exactly that job again."""
    asked = json.loads(json.dumps(spec))  # compare as stored: tuples become lists, ...
    keys = (set(stored) | set(asked)) - set(_STORED_ONLY)
    differ = sorted(k for k in keys if stored.get(k) != asked.get(k))
    if differ:
        # Names only: values may hold secrets (env).
        raise Conflict(f"id: job {job_id!r} exists with a different {', '.join(differ)}")


def _tail(path: Path, size: int = 1024) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
