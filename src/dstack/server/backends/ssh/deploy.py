"""What the server does on an SSH host: check prerequisites, install and start the agent under
supervision, and remove everything again on delete.

Everything lives in one directory of the SSH user's home (`~/.dstack-agent`), plus one line in
`~/.ssh/authorized_keys` (the project key); delete removes both, so the host is left as found.
The agent is copied as one zipapp (no internet needed on the host). It runs under systemd when
the host has a usable one (`choose_supervisor`: a system unit for root, a user unit for a user
with lingering), else under a restart loop started in its own session; either way a second
bootstrap of the same host finds the running agent instead of starting another.
Restart loop: the token reaches the loop on stdin and stays in its environment only, never on
disk. systemd: only the token's SHA-256 is written (`~/.dstack-agent/token.sha256`, mode 600)
and the unit starts the agent with `--token-sha256-file`: the agent needs nothing more to check
requests, so the token itself never touches the host's disk.
NOTE: the systemd path was written against systemd's documentation and is unit-tested only;
the test hosts (sshd in network namespaces) have no systemd, so it never ran on a real one.
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
echo "uid=$(id -u 2>/dev/null)"
echo "user=$(id -un 2>/dev/null)"
echo "python_path=$(command -v python3 2>/dev/null)"
T=""; command -v timeout >/dev/null 2>&1 && T="timeout 10"
if ! command -v docker >/dev/null 2>&1; then echo "docker=absent"
elif $T docker info >/dev/null 2>&1; then echo "docker=running"
else echo "docker=not_running"; fi
nv=""
[ -d /proc/driver/nvidia ] && nv="/proc/driver/nvidia"
for f in /dev/nvidia[0-9]*; do [ -e "$f" ] && nv="$f" && break; done
if [ -z "$nv" ]; then
  for v in /sys/bus/pci/devices/*/vendor; do
    [ -r "$v" ] || continue
    c=$(cat "${v%/vendor}/class" 2>/dev/null)
    case "$c" in 0x0300*|0x0302*) ;; *) continue;; esac
    if [ "$(cat "$v" 2>/dev/null)" = "0x10de" ]; then nv="${v%/vendor}"; break; fi
  done
fi
echo "nvidia_devices=$nv"
if ! command -v nvidia-smi >/dev/null 2>&1; then echo "nvidia_smi=absent"
elif $T nvidia-smi -L >/dev/null 2>&1; then echo "nvidia_smi=ok"
else echo "nvidia_smi=fails"; fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then echo "systemd=yes"
else echo "systemd=no"; fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}"
if [ -d /run/systemd/system ] && systemctl --user show-environment >/dev/null 2>&1
then echo "systemd_user=yes"; else echo "systemd_user=no"; fi
if [ -e "/var/lib/systemd/linger/$(id -un 2>/dev/null)" ]; then echo "linger=yes"
else echo "linger=no"; fi
"""

UNIT_NAME = "dstack-agent.service"
UNIT_MARKER = "# installed by dstack: the SSH fleet agent"


@dataclass(frozen=True)
class HostFacts:
    os: str
    arch: str
    python: str
    disk_free_mib: int
    home: str
    uid: str = ""
    user: str = ""
    python_path: str = ""
    docker: str = ""  # running | not_running | absent ("" = not reported)
    nvidia_devices: str = ""  # the first NVIDIA device/driver path found ("" = none)
    nvidia_smi: str = ""  # ok | fails | absent
    systemd: bool = False  # /run/systemd/system exists and systemctl is on the PATH
    systemd_user: bool = False  # `systemctl --user` answers for the SSH user
    linger: bool = False  # the SSH user's user manager runs without a login session


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
        uid=values.get("uid", "").strip(),
        user=values.get("user", "").strip(),
        python_path=values.get("python_path", "").strip(),
        docker=values.get("docker", "").strip(),
        nvidia_devices=values.get("nvidia_devices", "").strip(),
        nvidia_smi=values.get("nvidia_smi", "").strip(),
        systemd=values.get("systemd", "").strip() == "yes",
        systemd_user=values.get("systemd_user", "").strip() == "yes",
        linger=values.get("linger", "").strip() == "yes",
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
    if facts.nvidia_devices and facts.nvidia_smi != "ok":
        how = "is not installed" if facts.nvidia_smi == "absent" else "does not run"
        missing.append(
            f"GPU driver missing: NVIDIA devices found ({facts.nvidia_devices}) but nvidia-smi "
            f"{how} (install the NVIDIA driver so that `nvidia-smi` works, or remove the host)"
        )
    # Docker is not checked here: only jobs with `image` need it; `docker_note` tells them.
    return missing


def docker_note(facts: HostFacts) -> str | None:
    """Why jobs with `image` cannot run on this host (None: Docker answers, or not reported)."""
    if facts.docker == "absent":
        return "docker is not installed"
    if facts.docker == "not_running":
        return (
            "docker is installed but `docker info` fails (is the daemon running, and may the "
            "SSH user use it?)"
        )
    return None


def choose_supervisor(facts: HostFacts) -> str:
    """`systemd-system` for root on a systemd host, `systemd-user` for a user whose user manager
    answers and lingers (so the agent outlives the SSH session), else `loop`."""
    if not facts.python_path.startswith("/"):
        return "loop"
    if facts.systemd and facts.uid == "0":
        return "systemd-system"
    if facts.systemd and facts.systemd_user and facts.linger:
        return "systemd-user"
    return "loop"


def unit_path(supervisor: str) -> str:
    """Where the unit file goes (shell text: `$HOME` expands on the host)."""
    if supervisor == "systemd-system":
        return f"/etc/systemd/system/{UNIT_NAME}"
    return f'"$HOME"/.config/systemd/user/{UNIT_NAME}'


def unit_text(supervisor: str, home: str, python_path: str) -> str:
    """The unit that runs the agent with Restart=always; the port is read from the `port` file
    at each start, the token's hash from `token.sha256`."""
    d = f"{home.rstrip('/')}/{AGENT_DIR}"
    start = (
        f'exec {python_path} {d}/agent.pyz --home {d}/state --port "$$(cat {d}/port)" '
        f"--token-sha256-file {d}/token.sha256"
    )
    target = "multi-user.target" if supervisor == "systemd-system" else "default.target"
    return (
        f"{UNIT_MARKER}\n"
        "[Unit]\n"
        "Description=dstack agent (SSH fleet host)\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart=/bin/sh -c {shlex.quote(start)}\n"
        "Restart=always\n"
        "RestartSec=1\n"
        "KillMode=mixed\n"
        f"StandardOutput=append:{d}/loop.log\n"
        f"StandardError=append:{d}/loop.log\n"
        "\n"
        "[Install]\n"
        f"WantedBy={target}\n"
    )


def _systemctl(supervisor: str) -> str:
    return "systemctl --user" if supervisor == "systemd-user" else "systemctl"


_XDG = 'export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}"; '


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_script(sha256: str, directory: str = AGENT_DIR) -> str:
    """Reads the zipapp on stdin unless the same one is already there (in `~/<directory>`).
    Each upload writes its own temporary file (`$$`: this shell's pid): several instances on
    one login account (a Slurm allocation's nodes) upload at once, and a shared temporary name
    let one `mv` take the other's file away."""
    d = f'"$HOME"/{directory}'
    return (
        f"set -e; mkdir -p {d}; chmod 700 {d}; "
        f'if [ -f {d}/agent.sha256 ] && [ "$(cat {d}/agent.sha256)" = {sha256} ]; '
        f"then cat >/dev/null; echo kept; exit 0; fi; "
        f"cat > {d}/agent.pyz.$$ && mv -f {d}/agent.pyz.$$ {d}/agent.pyz && "
        f"echo {sha256} > {d}/agent.sha256.$$ && mv -f {d}/agent.sha256.$$ {d}/agent.sha256 && "
        "echo copied"
    )


def authorize_script(public_key: str) -> str:
    key = shlex.quote(public_key.strip())
    return (
        "set -e; mkdir -p ~/.ssh; chmod 700 ~/.ssh; touch ~/.ssh/authorized_keys; "
        f"grep -qxF {key} ~/.ssh/authorized_keys || echo {key} >> ~/.ssh/authorized_keys"
    )


def start_script(supervisor: str = "loop", facts: HostFacts | None = None) -> str:
    """Start the agent unless it runs; prints `port=N` and `started` or `running`.

    The token arrives on stdin. Under systemd the unit is written, enabled and started.
    Otherwise a restart loop runs the agent a second after it exits, on the
    same port (picked once, kept in `port`), until `stop` exists.
    """
    if supervisor != "loop":
        assert facts is not None
        return _systemd_start_script(supervisor, facts)
    return _loop_start_script()


def _pick_port() -> str:
    return (
        "python3 -c 'import socket; s = socket.socket(); "
        's.bind(("127.0.0.1", 0)); print(s.getsockname()[1])\''
    )


def _systemd_start_script(supervisor: str, facts: HostFacts) -> str:
    d = f'"$HOME"/{AGENT_DIR}'
    sc = _systemctl(supervisor)
    path = unit_path(supervisor)
    unit = unit_text(supervisor, facts.home, facts.python_path)
    return (
        f'set -e; {_XDG}D={d}; rm -f "$D/stop"; '
        '[ -s "$D/port" ] || ' + _pick_port() + ' > "$D/port"; '
        'echo "port=$(cat "$D/port")"; '
        f"if {sc} is-active --quiet {UNIT_NAME}; then cat >/dev/null; echo running; exit 0; fi; "
        # An agent an earlier bootstrap left under the restart loop is kept, too.
        'if [ -f "$D/loop.pid" ] && kill -0 "$(cat "$D/loop.pid")" 2>/dev/null; then '
        "cat >/dev/null; echo running; exit 0; fi; "
        "read -r DSTACK_AGENT_TOKEN; "
        '(umask 077; printf %s "$DSTACK_AGENT_TOKEN" | python3 -c '
        "'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'"
        ' > "$D/token.sha256"); '
        f'mkdir -p "$(dirname {path})"; '
        f"printf %s {shlex.quote(unit)} > {path}; "
        f"{sc} daemon-reload; {sc} enable {UNIT_NAME} >/dev/null 2>&1; "
        f"{sc} restart {UNIT_NAME}; "
        "echo started"
    )


def _loop_start_script() -> str:
    """The restart loop (no systemd).

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
    pick_port = _pick_port()
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
    """Stop the loop and the agent, wait for the agent to exit, remove what was installed.

    A dstack unit (user, or system when root), recognised by its marker line, is stopped,
    disabled and removed first, whichever supervisor the bootstrap chose."""
    d = f'"$HOME"/{AGENT_DIR}'
    units = ""
    for sup in ("systemd-user", "systemd-system"):
        path, sc = unit_path(sup), _systemctl(sup)
        cond = f"[ -f {path} ] && grep -qxF {shlex.quote(UNIT_MARKER)} {path}"
        if sup == "systemd-system":
            cond = f'[ "$(id -u)" = 0 ] && {cond}'
        units += (
            f"if {cond}; then {sc} disable --now {UNIT_NAME} >/dev/null 2>&1; "
            f"rm -f {path}; {sc} daemon-reload >/dev/null 2>&1; {sc} reset-failed "
            f"{UNIT_NAME} >/dev/null 2>&1; fi; "
        )
    script = (
        f"{_XDG}{units}"
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
