"""The job's own SSH server (process runtime): `ssh <run>`, scp, rsync, VS Code Remote-SSH and
port forwarding land in the job's working directory with the job's environment.

Why a server per job rather than the host's: the job's keys, environment and lifetime are its
own. The server listens on 127.0.0.1 only (a remote host is reached through its own sshd as a
ProxyJump), authorizes exactly the keys the job was submitted with, and dies with the job.
Sessions run through a small login script (sshd's ForceCommand) that loads the job's environment
and changes to its working directory before running what the client asked for, so scp/sftp
(`Subsystem sftp` becomes SSH_ORIGINAL_COMMAND) and `ssh run cmd` behave as in the job.

A host without OpenSSH's sshd can still give jobs SSH when whoever started the agent names
an SSH server of its own in BUILTIN_SSHD_ENV (the local backend: the server package's asyncssh
server, `dstack.server.backends.local_sshd`): it reads the same keys plus SERVER_FILE, becomes
the job's user itself, makes its own host key, and is started, watched and killed like sshd.

Counting established connections to the port gives `no_connections_secs`, which the server
compares with a dev environment's `inactivity_duration`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from dstack.agent import jobuser

SSH_DIR = "ssh"
SSH_FILE = "ssh.json"  # {port, user} (or {error}), written by the agent before the job runs
ACTIVITY_FILE = "activity.json"  # {connected, since}, written by the supervisor on change
SSHD_PID_FILE = "sshd.json"  # {pid}: lets the agent kill a lost supervisor's sshd

SERVER_FILE = "server.json"  # what a built-in server needs besides sshd's files
# Which OpenSSH sshd jobs get: a path, or "none" to use the built-in server even where sshd
# is installed (how CI checks a machine without openssh-server); unset: look for it.
SSHD_ENV = "DSTACK_AGENT_SSHD"
# A JSON argv list of an SSH server to use where there is no sshd; the job's SSH directory is
# appended. Set by the local backend for its agent (the agent itself is stdlib-only).
BUILTIN_SSHD_ENV = "DSTACK_AGENT_BUILTIN_SSHD"

SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/libexec/sftp-server",
)


def find_sshd() -> str | None:
    chosen = os.environ.get(SSHD_ENV, "").strip()
    if chosen == "none":
        return None
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    found = shutil.which("sshd")
    if found:
        return found
    for path in ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"):
        if os.access(path, os.X_OK):
            return path
    return None


def builtin_sshd() -> list[str] | None:
    try:
        argv = json.loads(os.environ.get(BUILTIN_SSHD_ENV) or "null")
    except ValueError:
        return None
    if isinstance(argv, list) and argv and all(isinstance(a, str) and a for a in argv):
        return argv
    return None


def find_sftp_server() -> str | None:
    for path in SFTP_SERVERS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("sftp-server")


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "root")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def availability(spec: dict[str, Any]) -> str | None:
    """None when this job can have an SSH server, else why not (reported to the user)."""
    if not spec.get("ssh_keys"):
        return "the job was submitted without SSH keys"
    if spec.get("runtime") == "docker" and shutil.which("docker") is None:
        return "the host has no docker client to open sessions in the job's container"
    if find_sshd() is None:
        if builtin_sshd() is not None:
            return None  # it makes its own host key and becomes the job's user itself
        return "the host has no OpenSSH server (sshd) installed"
    if shutil.which("ssh-keygen") is None:
        return "the host has no ssh-keygen to create the job's host key"
    drops = jobuser.job_user(spec) if os.geteuid() == 0 else None
    if drops and shutil.which("setpriv") is None:
        return f"the host has no setpriv to run SSH sessions as user {drops}"
    return None


def _env_script(env: dict[str, str]) -> str:
    lines = ["# The job's environment, loaded by every SSH session of the job."]
    for key, value in sorted(env.items()):
        if key.replace("_", "a").isalnum() and not key[0].isdigit():
            lines.append(f"export {key}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


LOGIN_SCRIPT = """#!/bin/sh
# Every SSH session of the job starts here (sshd ForceCommand).
. {env}
cd "$DSTACK_WORKING_DIR" 2>/dev/null || true
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then
  exec {drop}"${{SHELL:-/bin/sh}}" -c "$SSH_ORIGINAL_COMMAND"
fi
exec {drop}"${{SHELL:-/bin/sh}}"
"""


def drop_prefix(ident: dict[str, Any] | None) -> str:
    """A job run as another user (jobuser.py): its sessions log in to the job's server as the
    agent's user, and the login script becomes the job's user before running anything."""
    if not ident:
        return ""
    groups = ",".join(str(g) for g in ident["groups"]) or str(ident["gid"])
    return f"setpriv --reuid={ident['uid']} --regid={ident['gid']} --groups={groups} -- "


# Docker jobs: an image may have no sshd (busybox has none, and the host's cannot run inside it:
# it is linked against the host's libraries), so the job's server runs on the host and every
# session is a `docker exec` into the job's container, in its working dir, with its environment.
DOCKER_LOGIN_SCRIPT = """#!/bin/sh
# Every SSH session of the job runs inside its container (sshd ForceCommand).
. {env}
tty=
[ -t 0 ] && tty=-t
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then
  exec docker exec -i $tty -w {workdir} {container} /bin/sh -c "$SSH_ORIGINAL_COMMAND"
fi
exec docker exec -i $tty -w {workdir} {container} /bin/sh -c \
  'if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi'
"""
DOCKER_CLIENT_ENV = ("PATH", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH",
                     "DOCKER_TLS_VERIFY")  # fmt: skip


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(str(path), mode)


HOST_KEY_FILE = "ssh_host_ed25519_key"


def shared_host_key(home: Path) -> Path:
    """The host key every job's server on this agent presents, created on first use.

    One per agent, not one per job: key generation was on every job's start, and the jobs of
    one host are one host to an SSH client anyway. Created under a temporary name and linked
    into place, so two jobs starting at once agree on one key (the loser uses the winner's)."""
    key = home / HOST_KEY_FILE
    if key.exists():
        return key
    tmp = home / f".{HOST_KEY_FILE}.{os.getpid()}.{time.monotonic_ns()}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dstack-job", "-f", str(tmp)],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=30,
    )
    with contextlib.suppress(FileExistsError):
        os.link(tmp, key)
    for leftover in (tmp, Path(f"{tmp}.pub")):
        with contextlib.suppress(OSError):
            leftover.unlink()
    return key


def prepare(
    job_dir: Path,
    port: int,
    keys: list[str],
    env: dict[str, str],
    container: tuple[str, str] | None = None,
    ident: dict[str, Any] | None = None,
) -> list[str]:
    """Write the server's files under JOB_DIR/ssh and return its argv. CONTAINER is
    (name, working dir) for a docker job: sessions then run inside it; ENV is what the session
    needs on the host (the docker client's variables) rather than the job's."""
    sshd = find_sshd()
    builtin = builtin_sshd() if sshd is None else None
    if sshd is None and builtin is None:
        raise OSError("sshd not found")
    d = job_dir / SSH_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(str(d), 0o700)
    _write(d / "authorized_keys", "".join(k.strip() + "\n" for k in keys if k.strip()), 0o600)
    _write(d / "env.sh", _env_script(env), 0o600)
    env_file = shlex.quote(str(d / "env.sh"))
    if container is None:
        login = LOGIN_SCRIPT.format(env=env_file, drop=drop_prefix(ident))
    else:
        name, workdir = container
        login = DOCKER_LOGIN_SCRIPT.format(
            env=env_file, container=shlex.quote(name), workdir=shlex.quote(workdir)
        )
    _write(d / "login.sh", login, 0o700)
    if builtin is not None:
        # A process job's environment too: the server reads it before it becomes the job's
        # user (this directory is not the job user's to read); a docker job's uses login.sh.
        server = {
            "port": port,
            "user": current_user(),
            "ident": ident,
            "working_dir": env.get("DSTACK_WORKING_DIR"),
            "env": env if container is None else None,
        }
        _write(d / SERVER_FILE, json.dumps(server), 0o600)
        return [*builtin, str(d)]
    host_key = shared_host_key(job_dir.parent.parent)
    sftp = find_sftp_server()
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "AllowTcpForwarding yes",
        "AllowStreamLocalForwarding yes",
        "AllowAgentForwarding yes",
        "X11Forwarding no",
        "PrintMotd no",
        "PrintLastLog no",
        "ClientAliveInterval 30",
        "AcceptEnv LANG LC_*",
        "LogLevel ERROR",
        f"ForceCommand /bin/sh {d / 'login.sh'}",
    ]
    if ident:
        # Sessions are the job's user, but forwarding happens in sshd itself (the agent's
        # user): no Unix sockets (a root-only socket such as Docker's) and no agent sockets.
        lines = [ln for ln in lines if not ln.startswith(("AllowStreamLocal", "AllowAgent"))]
        lines += ["AllowStreamLocalForwarding no", "AllowAgentForwarding no"]
    if sftp:
        lines.append(f"Subsystem sftp {sftp}")
    _write(d / "sshd_config", "\n".join(lines) + "\n", 0o600)
    if os.getuid() == 0:
        # sshd's privilege separation needs this directory; a host without a running sshd
        # may not have it.
        with contextlib.suppress(OSError):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    return [sshd, "-D", "-e", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")]


def wait_listening(proc: Any, port: int, log: Path, timeout: float = 10.0) -> str | None:
    """None once the server accepts connections; else why it does not (it exited, e.g. the
    port was taken between the agent picking it and sshd binding it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            try:
                detail = log.read_text(errors="replace").strip()[-300:]
            except OSError:
                detail = ""
            return f"the job's SSH server exited ({proc.returncode}): {detail}".strip()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return None
        time.sleep(0.02)
    return "the job's SSH server did not start listening"


def count_connections(port: int) -> int:
    """Established TCP connections to 127.0.0.1:PORT, from /proc/net/tcp (no tools needed)."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) < 4 or fields[3] != "01":
                        continue
                    local_port = int(fields[1].rsplit(":", 1)[-1], 16)
                    if local_port == port:
                        total += 1
        except (OSError, ValueError):
            continue
    return total


def descendants(pid: int) -> list[int]:
    """Every process below PID (sshd's per-connection children and their sessions)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """Kill the server and every connection it serves: a stopped job keeps no session."""
    victims = [pid, *descendants(pid)]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)


class ActivityTracker:
    """Remembers since when the job has (or has not) had SSH connections; writes a file only
    when that flips, so an idle job costs no disk writes."""

    def __init__(self, path: Path, port: int, interval: float = 1.0) -> None:
        self.path, self.port, self.interval = path, port, interval
        self.connected: bool | None = None
        self.checked = 0.0

    def check(self, write: Any) -> None:
        now = time.monotonic()
        if now - self.checked < self.interval:
            return
        self.checked = now
        connected = count_connections(self.port) > 0
        if connected != self.connected:
            self.connected = connected
            write(self.path, {"connected": connected, "since": time.time()})


def no_connections_secs(activity: dict[str, Any] | None, now: float | None = None) -> int | None:
    if not isinstance(activity, dict):
        return None
    if activity.get("connected"):
        return 0
    since = activity.get("since")
    if not isinstance(since, (int, float)):
        return None
    return max(0, int((now if now is not None else time.time()) - since))


# --- the host's own sshd (SSH-fleet hosts) ----------------------------------------------------
# `ssh <run>` to a job on a remote host jumps through the host's sshd (ProxyJump), so the run's
# user key must be authorized there too while the job exists. Each line carries the job id as
# its comment, so removal takes exactly the job's lines and never one the host's owner wrote.

HOST_KEY_TAG = "dstack-job-"


def host_authorized_keys() -> Path:
    home = os.environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".ssh" / "authorized_keys"


def _tagged(key: str, job_id: str) -> str:
    kind, blob = key.split()[:2]
    return f"{kind} {blob} {HOST_KEY_TAG}{job_id}"


def authorize_on_host(job_id: str, keys: list[str], path: Path | None = None) -> None:
    if not keys:
        return
    path = path or host_authorized_keys()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        text = path.read_text()
    except OSError:
        text = ""
    present = set(text.splitlines())
    new = [_tagged(k, job_id) for k in keys if _tagged(k, job_id) not in present]
    if not new:
        return
    if text and not text.endswith("\n"):
        text += "\n"
    _write(path, text + "\n".join(new) + "\n", 0o600)


def revoke_on_host(job_id: str, path: Path | None = None) -> None:
    path = path or host_authorized_keys()
    try:
        text = path.read_text()
    except OSError:
        return
    tag = f" {HOST_KEY_TAG}{job_id}"
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not line.rstrip("\n").endswith(tag)]
    if len(kept) != len(lines):
        _write(path, "".join(kept), 0o600)
