"""Start (or find) the agent of this machine for the local backend.

The agent runs in its own session so it outlives the server: a restarted server finds
it, and the jobs it supervises, still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import dstack
from dstack.agent.util import pid_alive
from dstack.server.agent_client import AgentClient, AgentClientError

START_TIMEOUT = 15.0
POLL_INTERVAL = 0.02
STOP_TIMEOUT = 5.0


@dataclass
class LocalAgent:
    url: str
    pid: int


class LocalAgentError(RuntimeError):
    pass


def read_agent_json(home: Path) -> dict | None:
    try:
        data = json.loads((home / "agent.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _token_matches(home: Path, token: str) -> bool:
    try:
        stored = (home / "token.sha256").read_text().strip()
    except OSError:
        return False
    return stored == hashlib.sha256(token.encode()).hexdigest()


async def _answers(url: str, token: str, timeout: float = 2.0) -> bool:
    """Healthcheck plus an authenticated call, so a token mismatch is noticed."""
    async with AgentClient(url, token, timeout=timeout) as client:
        try:
            health = await client.healthcheck()
        except AgentClientError:
            return False
        if not isinstance(health, dict) or health.get("service") != "dstack-agent":
            return False  # something else took the port
        try:
            await client.get_job("-")  # never a valid id: 404 proves the token is accepted
        except AgentClientError as e:
            return getattr(e, "status_code", None) == 404
    return True


async def _existing(home: Path, token: str) -> LocalAgent | None:
    info = read_agent_json(home)
    if not info or not pid_alive(int(info.get("pid", 0))):
        return None
    url = f"http://127.0.0.1:{int(info['port'])}"
    pid = int(info["pid"])
    exposed = _holds_private_env(pid)  # started by an older server, the token in its env
    exposed = exposed or _job_user_changed(pid)  # its jobs must run as the new setting says
    if not exposed and _token_matches(home, token) and await _answers(url, token):
        return LocalAgent(url=url, pid=pid)
    if is_agent_of(pid, home):
        await _stop_pid(pid)  # wrong token, wedged or exposed: replace it (jobs survive)
    return None


def _env_of(pid: int) -> dict[str, str] | None:
    try:
        items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    pairs = (item.decode(errors="replace").partition("=") for item in items if item)
    return {k: v for k, _, v in pairs}


def _holds_private_env(pid: int) -> bool:
    """Whether the process's environment (readable by every job) holds a credential."""
    return any(k in _PRIVATE_ENV for k in _env_of(pid) or {})


def _job_user_changed(pid: int) -> bool:
    """Whether the agent was started with other settings than now: another default job user,
    or without this server's own SSH server (an older or another install started it)."""
    env = _env_of(pid)
    if env is None:
        return False
    return (
        env.get(JOB_USER_ENV, "") != job_user_setting()
        or env.get(BUILTIN_SSHD_ENV) != builtin_sshd_setting()
    )


def is_agent_of(pid: int, home: Path) -> bool:
    """Only ever signal our own agent: after a reboot the recorded pid may be anyone's."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in argv]
    is_agent = "dstack.agent" in args or any(a.endswith(".pyz") for a in args)
    return is_agent and str(home) in args


async def _stop_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while pid_alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(POLL_INTERVAL)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# The server's own credentials: never in the agent's environment, which every process of the
# same user (the local backend's jobs) reads in /proc/<agent pid>/environ.
_PRIVATE_ENV = ("DSTACK_AGENT_TOKEN", "DSTACK_SERVER_ADMIN_TOKEN", "DSTACK_DATABASE_URL")


# Server setting: the unprivileged account a root local agent runs process jobs without `user`
# as, so they cannot read this server's database and keys (docs/secrets.md); empty: the
# agent's own user. The agent reads it as JOB_USER_ENV (agent/jobuser.py).
LOCAL_JOB_USER_ENV = "DSTACK_LOCAL_JOB_USER"
DEFAULT_LOCAL_JOB_USER = "dstack-job"
JOB_USER_ENV = "DSTACK_AGENT_JOB_USER"


# Where this machine has no OpenSSH sshd, the agent gives jobs the server package's own SSH
# server (backends/local_sshd.py), run with this server's interpreter (agent/sshd.py).
BUILTIN_SSHD_ENV = "DSTACK_AGENT_BUILTIN_SSHD"


def builtin_sshd_setting() -> str:
    return json.dumps([sys.executable, "-m", "dstack.server.backends.local_sshd"])


def job_user_setting() -> str:
    return os.environ.get(LOCAL_JOB_USER_ENV, DEFAULT_LOCAL_JOB_USER).strip()


def agent_env() -> dict[str, str]:
    package_root = str(Path(dstack.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env[JOB_USER_ENV] = job_user_setting()
    env[BUILTIN_SSHD_ENV] = builtin_sshd_setting()
    return env


def _spawn(home: Path, token: str) -> subprocess.Popen[bytes]:
    """The agent gets only the token's SHA-256, in a 0600 file: not the token, and nothing in
    its environment or command line (both readable in /proc by the jobs it runs)."""
    digest_file = home / "token.sha256"
    fd = os.open(digest_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(hashlib.sha256(token.encode()).hexdigest() + "\n")
    os.chmod(digest_file, 0o600)
    argv = [sys.executable, "-m", "dstack.agent", "--home", str(home), "--port", "0"]
    argv += ["--token-sha256-file", str(digest_file)]
    env = agent_env()
    with open(home / "agent.stdout.log", "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )
    # Reap it if it ever exits while we live, so it never lingers as a zombie.
    threading.Thread(target=proc.wait, daemon=True).start()
    return proc


def _log_tail(home: Path) -> str:
    try:
        return (home / "agent.stdout.log").read_text(errors="replace")[-2000:]
    except OSError:
        return ""


async def ensure_local_agent(home: Path, token: str) -> LocalAgent:
    """Reuse the live agent of `home` when it accepts `token`, else start one."""
    home = Path(home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    found = await _existing(home, token)
    if found is not None:
        return found
    proc = _spawn(home, token)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        info = read_agent_json(home)
        if info and int(info.get("pid", 0)) == proc.pid:
            url = f"http://127.0.0.1:{int(info['port'])}"
            if await _answers(url, token, timeout=1.0):
                return LocalAgent(url=url, pid=proc.pid)
        if proc.poll() is not None:
            raise LocalAgentError(f"agent exited with code {proc.returncode}: {_log_tail(home)}")
        await asyncio.sleep(POLL_INTERVAL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    raise LocalAgentError(f"agent did not start within {START_TIMEOUT}s: {_log_tail(home)}")
