"""What the server does on an SSH host: check prerequisites, install and start the agent under
supervision, and remove everything again on delete.

Everything lives in one directory of the SSH user's home (`~/.dstack-agent`), plus one line in
`~/.ssh/authorized_keys` (the project key); delete removes both, so the host is left as found.
The agent is copied as one zipapp (no internet needed on the host). It runs under a restart
loop started in its own session (systemd is not required); the loop's pid file makes a second
bootstrap of the same host find the running agent instead of starting another.
The token reaches the loop on stdin and stays in its environment only: never on disk.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

AGENT_DIR = ".dstack-agent"
MIN_PYTHON = (3, 9)
MIN_FREE_DISK_MIB = 512
ARCHITECTURES = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm", "arm64": "arm"}

CHECK_SCRIPT = r"""
echo "os=$(uname -s 2>/dev/null)"
echo "arch=$(uname -m 2>/dev/null)"
if command -v python3 >/dev/null 2>&1; then
  echo "python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
else
  echo "python="
fi
echo "disk_free_kib=$(df -Pk "$HOME" 2>/dev/null | awk 'NR==2 {print $4}')"
echo "home=$HOME"
"""


@dataclass(frozen=True)
class HostFacts:
    os: str
    arch: str
    python: str
    disk_free_mib: int
    home: str


def parse_facts(text: str) -> HostFacts:
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        disk = int(values.get("disk_free_kib") or 0) // 1024
    except ValueError:
        disk = 0
    return HostFacts(
        os=values.get("os", "").strip(),
        arch=values.get("arch", "").strip(),
        python=values.get("python", "").strip(),
        disk_free_mib=disk,
        home=values.get("home", "").strip(),
    )


def missing_prerequisites(facts: HostFacts) -> list[str]:
    """Each unmet prerequisite by name, with what is needed (empty: the host is fine)."""
    missing = []
    if facts.os and facts.os != "Linux":
        missing.append(f"operating system: {facts.os} (Linux is needed)")
    if facts.arch not in ARCHITECTURES:
        missing.append(f"architecture: {facts.arch or 'unknown'} (x86_64 or aarch64 is needed)")
    if not facts.python:
        missing.append(
            "python3: not found on the PATH (the dstack agent needs Python "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ on the host)"
        )
    else:
        try:
            version = tuple(int(x) for x in facts.python.split(".")[:2])
        except ValueError:
            version = (0, 0)
        if version < MIN_PYTHON:
            missing.append(
                f"python3: version {facts.python} ({MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ is needed)"
            )
    if facts.disk_free_mib < MIN_FREE_DISK_MIB:
        missing.append(
            f"free disk: {facts.disk_free_mib} MiB in {facts.home or '~'} "
            f"(at least {MIN_FREE_DISK_MIB} MiB is needed)"
        )
    return missing


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_script(sha256: str) -> str:
    """Reads the zipapp on stdin unless the same one is already there."""
    d = f'"$HOME"/{AGENT_DIR}'
    return (
        f"set -e; mkdir -p {d}; chmod 700 {d}; "
        f'if [ -f {d}/agent.sha256 ] && [ "$(cat {d}/agent.sha256)" = {sha256} ]; '
        f"then cat >/dev/null; echo kept; exit 0; fi; "
        f"cat > {d}/agent.pyz.tmp && mv {d}/agent.pyz.tmp {d}/agent.pyz && "
        f"echo {sha256} > {d}/agent.sha256 && echo copied"
    )


def authorize_script(public_key: str) -> str:
    key = shlex.quote(public_key.strip())
    return (
        "set -e; mkdir -p ~/.ssh; chmod 700 ~/.ssh; touch ~/.ssh/authorized_keys; "
        f"grep -qxF {key} ~/.ssh/authorized_keys || echo {key} >> ~/.ssh/authorized_keys"
    )


def start_script() -> str:
    """Start the restart loop unless it runs; prints `port=N` and `started` or `running`.

    The token arrives on stdin. The loop restarts the agent a second after it exits, on the
    same port (picked once, kept in `port`), until `stop` exists.
    """
    d = f'"$HOME"/{AGENT_DIR}'
    loop = (
        'echo $$ > "$D/loop.pid"; '
        'while [ ! -f "$D/stop" ]; do '
        'python3 "$D/agent.pyz" --home "$D/state" --port "$(cat "$D/port")" '
        '>> "$D/loop.log" 2>&1; sleep 1; done'
    )
    pick_port = (
        "python3 -c 'import socket; s = socket.socket(); "
        's.bind(("127.0.0.1", 0)); print(s.getsockname()[1])\''
    )
    return (
        f'D={d}; export D; rm -f "$D/stop"; '
        '[ -s "$D/port" ] || ' + pick_port + ' > "$D/port"; '
        'echo "port=$(cat "$D/port")"; '
        'if [ -f "$D/loop.pid" ] && kill -0 "$(cat "$D/loop.pid")" 2>/dev/null; then '
        "cat >/dev/null; echo running; exit 0; fi; "
        "read -r DSTACK_AGENT_TOKEN; export DSTACK_AGENT_TOKEN; "
        f"setsid nohup sh -c {shlex.quote(loop)} </dev/null >/dev/null 2>&1 & "
        'i=0; while [ ! -f "$D/loop.pid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; '
        "echo started"
    )


def stop_script(public_key: str | None) -> str:
    """Stop the loop and the agent, wait for the agent to exit, remove what was installed."""
    d = f'"$HOME"/{AGENT_DIR}'
    script = (
        f"D={d}; "
        'if [ -d "$D" ]; then touch "$D/stop"; '
        'if [ -f "$D/loop.pid" ]; then kill -TERM -- -"$(cat "$D/loop.pid")" 2>/dev/null; '
        'kill -TERM "$(cat "$D/loop.pid")" 2>/dev/null; fi; '
        'if [ -f "$D/state/agent.json" ]; then '
        'pid=$(sed -n \'s/.*"pid": *\\([0-9]*\\).*/\\1/p\' "$D/state/agent.json"); '
        'if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null; i=0; '
        'while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; '
        'kill -KILL "$pid" 2>/dev/null; fi; fi; '
        'rm -rf "$D"; fi; '
    )
    if public_key:
        key = shlex.quote(public_key.strip())
        script += (
            "if [ -f ~/.ssh/authorized_keys ]; then "
            f"grep -vxF {key} ~/.ssh/authorized_keys > ~/.ssh/authorized_keys.dstack-tmp; "
            "cat ~/.ssh/authorized_keys.dstack-tmp > ~/.ssh/authorized_keys; "
            "rm -f ~/.ssh/authorized_keys.dstack-tmp; fi; "
        )
    return script + "echo stopped"


def agent_pid_script() -> str:
    d = f'"$HOME"/{AGENT_DIR}'
    return f"cat {d}/state/agent.json 2>/dev/null || true"
