"""One small process per job: runs it, records its output, enforces stops and limits.

It runs in its own session so that it outlives the agent; everything the agent needs
to know about the job is written to files in the job directory, ending with an atomic
result.json. Usage: python3 -m dstack.agent.supervisor JOB_DIR
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dstack.agent import (
    docker,
    files,
    gitclone,
    jobuser,
    notify,
    pyenv,
    registry,
    volumes,
)
from dstack.agent.diskspace import DiskWatch, is_disk_full, is_full, write_reserved
from dstack.agent.gpus import GPUS_FILE, visible_devices_env
from dstack.agent.logs import CHUNK_SIZE, LogWriter
from dstack.agent.ports import LISTEN_FILE, SERVICE_PORT_ENV
from dstack.agent.sshd_job import JobSshServer
from dstack.agent.util import (
    CHILD_FILE,
    CODE_DIR,
    LOGS_FILE,
    PORTS_FILE,
    READY_FILE,
    RESULT_FILE,
    SPEC_FILE,
    STOP_FILE,
    now_iso,
    proc_start_time,
    read_json,
    write_json_atomic,
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "SHELL", "TZ")
LEFTOVER_READ_TIMEOUT = 5.0
# Docker: how long `docker stop`/`docker kill` get before the docker client itself is killed
# (a wedged daemon must not keep the job "running" forever).
DOCKER_GRACE_SECONDS = 10.0
PORTS_WAIT_SECONDS = 60.0
VOLUME_ERROR = "volume_error"
MPI_HOSTFILE_ENV = "DSTACK_MPI_HOSTFILE"
MPI_HOSTFILE_CONTAINER = "/dstack/mpi/hostfile"
# New output is noted to the agent at most this often (its report carries the log's size).
NOTE_OUTPUT_SECONDS = 0.1


class StartError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def base_env() -> dict[str, str]:
    """A clean environment: the agent's own variables (PYTHONPATH, tokens) never leak in."""
    env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("LANG", "C.UTF-8")
    if "HOME" not in env or "USER" not in env:
        try:
            entry = pwd.getpwuid(os.getuid())
            env.setdefault("HOME", entry.pw_dir)
            env.setdefault("USER", entry.pw_name)
            env.setdefault("SHELL", entry.pw_shell or "/bin/sh")
        except KeyError:
            pass
    env["PYTHONUNBUFFERED"] = "1"
    return env


def process_workdir(code_dir: Path, working_dir: str | None) -> Path:
    # The code of a job run as another user lives elsewhere (jobuser.py): `code` links to it.
    code_dir = Path(os.path.realpath(code_dir))
    if not working_dir:
        return code_dir
    return Path(working_dir) if working_dir.startswith("/") else code_dir / working_dir


class Supervisor:
    def __init__(self, job_dir: Path) -> None:
        self.dir = job_dir
        spec = read_json(job_dir / SPEC_FILE)
        if not isinstance(spec, dict):
            raise SystemExit(f"cannot read {job_dir / SPEC_FILE}")
        self.spec: dict[str, Any] = spec
        self.docker = spec["runtime"] == "docker"
        self.log = LogWriter(job_dir / LOGS_FILE)
        self.wake = threading.Event()
        self.started = time.monotonic()
        self.stop_reason: str | None = None
        self.stop_message: str | None = None
        self.graceful_sent = False
        self.abort_sent = False
        self.kill_deadline: float | None = None
        self.client_kill_deadline: float | None = None
        self.signal_stop = False
        self.child: subprocess.Popen[bytes] | None = None
        self.job_env: dict[str, str] = {}
        self.ssh = JobSshServer(job_dir, spec, self.docker)
        self._noted_at = 0.0
        self._output_pending = False
        self.disk = DiskWatch(job_dir)
        self.disk_full = False

    # --- signals -------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.signal_stop = True
        self.wake.set()

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    # --- start ---------------------------------------------------------------------
    def _start(self) -> subprocess.Popen[bytes]:
        code_dir = self.dir / CODE_DIR
        code_dir.mkdir(exist_ok=True)
        binds = self._volumes()
        if self.docker:
            return self._start_docker(code_dir, binds)
        workdir = process_workdir(code_dir, self.spec.get("working_dir"))
        ident = jobuser.identity(self.dir)
        home = ident["home"] if ident else base_env().get("HOME", "/")
        try:
            repo = self.spec.get("repo")
            if repo:
                gitclone.clone(repo, files.target(repo["path"], home, str(workdir)), ident)
            files.place(self.dir, self.spec, home, str(workdir), ident)
        except (files.FilesError, gitclone.CloneError) as e:
            raise StartError("executor_error", str(e)) from None
        if not workdir.is_dir():
            raise StartError("executor_error", f"working_dir {workdir} does not exist")
        try:
            links = volumes.link_for_process(binds)
        except volumes.VolumeError as e:
            raise StartError(VOLUME_ERROR, str(e)) from None
        write_json_atomic(self.dir / volumes.LINKS_FILE, links)
        env = base_env()
        if ident:
            env.update(jobuser.user_env(ident))
        env["PATH"] = pyenv.path_env(self.dir, env["PATH"])
        real_code = os.path.realpath(code_dir)
        env.update({"DSTACK_WORKING_DIR": str(workdir), "DSTACK_REPO_DIR": real_code})
        env.update(volumes.volume_env(binds))
        env.update(visible_devices_env(read_json(self.dir / GPUS_FILE)))
        hostfile = self._mpi_hostfile(ident)
        if hostfile is not None:
            env[MPI_HOSTFILE_ENV] = str(hostfile)
        env.update(self.spec.get("env") or {})
        listen = read_json(self.dir / LISTEN_FILE) or {}
        if listen.get("port"):
            env[SERVICE_PORT_ENV] = str(listen["port"])  # the agent chose it: it was free
        self.job_env = env
        return self._popen(self.spec["commands"], env, str(workdir), ident)

    def _mpi_hostfile(self, ident: dict[str, Any] | None = None) -> Path | None:
        """The node list of a (multi-node) job, written for MPI launchers: `<job>/mpi/hostfile`
        (in a container: mounted read-only at MPI_HOSTFILE_CONTAINER; a job run as another
        user cannot enter the agent's home, so beside its code: `<code dir>-mpi/hostfile`)."""
        text = self.spec.get("mpi_hostfile")
        if not isinstance(text, str) or not text:
            return None
        parent = Path(ident["dir"] + "-mpi") if ident and ident.get("dir") else self.dir / "mpi"
        path = parent / "hostfile"
        parent.mkdir(mode=0o755, exist_ok=True)
        path.write_text(text)
        return path

    def _volumes(self) -> list[dict[str, Any]]:
        """The job's volumes on this host (agent home: two levels above the job's dir)."""
        try:
            ident = None if self.docker else jobuser.identity(self.dir)
            return volumes.prepare(self.spec.get("volumes") or [], self.dir.parent.parent, ident)
        except volumes.VolumeError as e:
            raise StartError(VOLUME_ERROR, str(e)) from None

    def _start_docker(self, code_dir: Path, binds: list[dict[str, Any]]) -> subprocess.Popen[bytes]:
        docker_bin = shutil.which("docker")
        if docker_bin is None:
            raise StartError("creating_container_error", "docker is not installed on the host")
        spec = dict(self.spec)
        if spec.get("registry_auth"):
            error = registry.pull(spec["image"], spec["registry_auth"], docker_bin)
            if error is not None:
                raise StartError("creating_container_error", error)
        job_env = {
            "DSTACK_WORKING_DIR": docker.container_workdir(spec.get("working_dir")),
            "DSTACK_REPO_DIR": docker.CODE_MOUNT,
        }
        # In the container a volume is where it is mounted.
        job_env.update({volumes.env_name(b["name"]): b["path"] for b in binds if b.get("name")})
        hostfile = self._mpi_hostfile()
        if hostfile is not None:
            job_env[MPI_HOSTFILE_ENV] = MPI_HOSTFILE_CONTAINER
        job_env.update(spec.get("env") or {})
        spec["env"] = job_env
        has_nvidia = shutil.which("nvidia-smi") is not None
        gpus = read_json(self.dir / GPUS_FILE)
        workdir = docker.container_workdir(spec.get("working_dir"))
        mounts = files.docker_mounts(self.dir, spec, workdir) + self._docker_repo(spec, workdir)
        argv = docker.run_argv(spec, str(code_dir), has_nvidia, gpus, binds, mounts)
        argv[0] = docker_bin
        if hostfile is not None:  # right after `docker run`
            argv[2:2] = ["-v", f"{hostfile}:{MPI_HOSTFILE_CONTAINER}:ro"]
        env = dict(os.environ)
        env.update(job_env)
        return self._popen(argv, env, str(self.dir))

    def _docker_repo(self, spec: dict[str, Any], workdir: str) -> list[str]:
        """Clone the job's repo on the host, to be bind-mounted at its container path."""
        repo = spec.get("repo")
        if not repo:
            return []
        staging = gitclone.staging_dir(self.dir)
        try:
            gitclone.clone(repo, str(staging), None)
        except gitclone.CloneError as e:
            raise StartError("executor_error", str(e)) from None
        home = spec.get("home_dir") or "/root"
        return ["-v", f"{staging}:{files.target(repo['path'], home, workdir)}"]

    def _popen(
        self, argv: list[str], env: dict[str, str], cwd: str, ident: dict[str, Any] | None = None
    ) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                argv,
                **jobuser.popen_kwargs(ident),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            raise StartError("executor_error", f"cannot start {argv[0]}: {e}") from e

    # --- output ----------------------------------------------------------------------
    def _pump(self, pipe: Any, stream: str) -> None:
        fd = pipe.fileno()
        while True:
            try:
                data = os.read(fd, CHUNK_SIZE)
            except OSError:
                break
            if not data:
                break
            # Disk full: drop output rather than block the job on a full pipe.
            try:
                self.log.write(stream, data)
            except OSError as e:
                if is_disk_full(e):
                    self.disk.note_full()
            else:
                self._note_output()
        pipe.close()

    def _note_output(self) -> None:
        """Tell the agent the log grew, at most every NOTE_OUTPUT_SECONDS (a chatty job must
        not flood it); what is held back is noted by the main loop's next turn."""
        now = time.monotonic()
        if now - self._noted_at < NOTE_OUTPUT_SECONDS:
            self._output_pending = True
            return
        self._noted_at, self._output_pending = now, False
        notify.send(self.dir)

    def _watch_ports(self) -> None:
        wanted = {str(p) for p in self.spec.get("ports") or []}
        deadline = time.monotonic() + PORTS_WAIT_SECONDS
        name = docker.container_name(self.spec["id"])
        while self.child is not None and self.child.poll() is None:
            proc = docker.docker_cmd(["port", name], timeout=10)
            ports = docker.parse_docker_port(proc.stdout) if proc and proc.returncode == 0 else {}
            if ports and wanted.issubset(ports):
                write_json_atomic(self.dir / PORTS_FILE, ports)
                notify.send(self.dir)
                return
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)

    # --- stopping --------------------------------------------------------------------
    def _request_stop(self, abort: bool, reason: str, message: str | None = None) -> None:
        if self.child is None or self.child.poll() is not None:
            return  # finished on its own first: the outcome stays the job's own
        if self.stop_reason is None:
            self.stop_reason, self.stop_message = reason, message
        if abort and not self.abort_sent:
            self.abort_sent = True
            self._kill()
        elif not self.graceful_sent and not self.abort_sent:
            self.graceful_sent = True
            grace = int(self.spec.get("stop_duration", 300))
            if self.docker:
                grace += DOCKER_GRACE_SECONDS  # `docker stop -t` kills on its own schedule
            self.kill_deadline = time.monotonic() + grace
            self._terminate()

    def _signal_group(self, sig: int) -> None:
        if self.child is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.child.pid, sig)

    def _terminate(self) -> None:
        if self.docker:
            timeout = str(int(self.spec.get("stop_duration", 300)))
            self._docker_async(["stop", "-t", timeout])
        else:
            self._signal_group(signal.SIGTERM)

    def _kill(self) -> None:
        if self.docker:
            self._docker_async(["kill"])
            if self.client_kill_deadline is None:
                self.client_kill_deadline = time.monotonic() + DOCKER_GRACE_SECONDS
        else:
            self._signal_group(signal.SIGKILL)

    def _docker_async(self, args: list[str]) -> None:
        """Docker commands block (stop waits); retry until the container exists or ends."""
        name = docker.container_name(self.spec["id"])

        def loop() -> None:
            while self.child is not None and self.child.poll() is None:
                proc = docker.docker_cmd([*args, name], timeout=None)
                if proc is not None and proc.returncode == 0:
                    return
                time.sleep(0.3)

        threading.Thread(target=loop, daemon=True).start()

    def _check_requests(self) -> None:
        stop = read_json(self.dir / STOP_FILE)
        if isinstance(stop, dict):
            reason = stop.get("reason") or "terminated_by_server"
            self._request_stop(bool(stop.get("abort")), reason, stop.get("message"))
        if self.signal_stop:
            self._request_stop(False, "terminated_by_server")
        max_duration = self.spec.get("max_duration")
        if max_duration and time.monotonic() - self.started > max_duration:
            self._request_stop(
                False, "max_duration_exceeded", f"max_duration of {max_duration}s exceeded"
            )
        now = time.monotonic()
        if self.kill_deadline is not None and now > self.kill_deadline:
            self.kill_deadline = None
            self._kill()
        if self.client_kill_deadline is not None and now > self.client_kill_deadline:
            self.client_kill_deadline = None
            self._signal_group(signal.SIGKILL)  # the docker client, as a last resort

    # --- main ------------------------------------------------------------------------
    def run(self) -> None:
        self._install_signals()
        (self.dir / READY_FILE).touch()
        try:
            self.child = self._start()
        except StartError as e:
            self.log.write("stderr", (str(e) + "\n").encode())
            self._finish(None, e.reason, str(e))
            return
        # Lets the agent clean up the job's process group should this supervisor be lost.
        child_info = {"pid": self.child.pid, "proc_start": proc_start_time(self.child.pid)}
        write_json_atomic(self.dir / CHILD_FILE, child_info)
        readers = [
            threading.Thread(target=self._pump, args=(self.child.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._pump, args=(self.child.stderr, "stderr"), daemon=True),
        ]
        for thread in readers:
            thread.start()
        if self.docker and self.spec.get("ports"):
            threading.Thread(target=self._watch_ports, daemon=True).start()
        threading.Thread(target=self._wait_child, daemon=True).start()
        # Beside the job, never before it: a one-second job must not wait for its sshd.
        threading.Thread(target=self.ssh.start, args=(self.job_env,), daemon=True).start()
        while self.child.poll() is None:
            self._check_requests()
            if not self.disk_full and self.disk.exhausted():
                self.disk_full = True
                self._request_stop(True, "executor_error", self.disk.message())
            self.ssh.check_activity()
            if self._output_pending:
                self._note_output()
            self.wake.wait(0.2)
            self.wake.clear()
        self.ssh.stop()
        if not self.docker:
            self._signal_group(signal.SIGKILL)  # leftovers die with the job, as in a container
        for thread in readers:
            thread.join(LEFTOVER_READ_TIMEOUT)
        self._finish(self.child.returncode, None, None)

    def _wait_child(self) -> None:
        assert self.child is not None
        self.child.wait()
        self.wake.set()

    def abandon(self, message: str) -> None:
        self.ssh.stop()
        if self.child is not None and self.child.poll() is None:
            self._signal_group(signal.SIGKILL)
            if self.docker:
                docker.docker_cmd(["kill", docker.container_name(self.spec["id"])])
        result = {
            "status": "failed",
            "exit_status": None,
            "termination_reason": "executor_error",
            "termination_message": message,
            "finished_at": now_iso(),
        }
        write_reserved(self.dir / RESULT_FILE, result)
        notify.send(self.dir)

    def _finish(self, returncode: int | None, reason: str | None, message: str | None) -> None:
        exit_status = (
            None if returncode is None else (returncode if returncode >= 0 else 128 - returncode)
        )
        if reason is None and (self.disk_full or (exit_status and is_full(self.dir))):
            # Stopped for, or failed on, a full disk: that is what the user must hear.
            reason, message = "executor_error", self.disk.message()
        if reason is not None:
            status = "failed"
        elif self.stop_reason is not None:
            status, reason, message = "terminated", self.stop_reason, self.stop_message
        elif exit_status == 0:
            status, reason = "done", "done_by_runner"
        else:
            status = "failed"
            docker_failed = self.docker and exit_status == 125
            reason = "creating_container_error" if docker_failed else "container_exited_with_error"
            message = f"Exited with code {exit_status}."
            tail = self.log.tail_text()
            if tail:
                message += " Last output:\n" + tail
        result = {
            "status": status,
            "exit_status": exit_status,
            "termination_reason": reason,
            "termination_message": message,
            "finished_at": now_iso(),
        }
        with contextlib.suppress(OSError):
            self.log.close()
        volumes.unlink(read_json(self.dir / volumes.LINKS_FILE) or [])
        write_reserved(self.dir / RESULT_FILE, result)
        notify.send(self.dir)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m dstack.agent.supervisor JOB_DIR", file=sys.stderr)
        return 2
    supervisor = Supervisor(Path(args[0]))
    try:
        supervisor.run()
    except Exception as e:
        # A bug here must still leave a result behind, not a job stuck "running".
        if not (supervisor.dir / RESULT_FILE).exists():
            full = is_disk_full(e)
            supervisor.abandon(supervisor.disk.message() if full else f"supervisor error: {e!r}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
