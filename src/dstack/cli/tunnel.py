"""Attaching to a job over SSH: which ports to forward where, and the one `ssh` process that
holds the connection (and the forwards) while the CLI is attached.

Why one OpenSSH master process: the same path works for a job on this machine (its sshd on
127.0.0.1) and for a job on a remote host (ProxyJump through the host), it counts as a
connection for a dev environment's inactivity, and `ssh -O check` on its control socket tells
us when it is ready. On the local backend the process runtime shares this machine's network,
so an app port forwarded to the same local port is already there and is not forwarded again.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstack.cli.common import CLIError
from dstack.cli.sshconfig import SSHHost

JOB_SSH_PORT = 10022  # the job's sshd, as a container port in job_runtime_data.ports
RESERVED = range(10000, 11000)
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Forward:
    local_port: int
    remote_port: int
    direct: bool = False  # already reachable on this machine: nothing to forward
    target: int | None = None  # the host port behind remote_port, if not the same (docker)


def port_free(port: int, host: str = "localhost") -> bool:
    """Whether ssh could listen there (SO_REUSEADDR, as ssh binds, so TIME_WAIT is no issue)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError:
                return False
    return True


def next_free(port: int, host: str = "localhost", taken: set[int] | None = None) -> int:
    candidate = port
    while candidate < 65535:
        if candidate not in (taken or set()) and port_free(candidate, host):
            return candidate
        candidate += 1
    raise CLIError(f"no free local port at or above {port}")


def parse_override(text: str) -> tuple[int | None, int]:
    """`-p 8080:80`, `-p 8080` (same port both sides) or `-p *:80` -> (local, container)."""
    local, sep, container = text.partition(":")
    try:
        if not sep:
            port = int(text)
            return port, port
        return (None if local.strip() == "*" else int(local)), int(container)
    except ValueError:
        raise CLIError(f"Invalid port mapping: {text}") from None


def plan_forwards(
    app_specs: list[dict[str, Any]],
    overrides: list[str],
    *,
    same_network: bool,
    host: str = "localhost",
    action: str = "attach",
    held: dict[int, int] | None = None,
) -> list[Forward]:
    """The forwards for the job's app ports (cli.md §7, configuration.md §11): a fixed local
    port that is busy is an error naming the next free one; `*:N` takes N or the next free.
    HELD (local -> remote) are forwards another attach of the same job already holds: reused,
    not an error."""
    held = held or {}
    wanted: dict[int, int | None] = {}
    for spec in app_specs:
        port = int(spec["port"])
        if port in RESERVED:
            continue
        local = spec.get("map_to_port")
        wanted[port] = int(local) if local is not None else None
    for text in overrides:
        local, container = parse_override(text)
        if container not in wanted:
            raise CLIError(f"Port {container} is not exposed by the run; it cannot be forwarded")
        wanted[container] = local
    forwards: list[Forward] = []
    taken: set[int] = set()
    for container, local in wanted.items():
        if same_network and local in (None, container):
            forwards.append(Forward(container, container, direct=True))
            taken.add(container)
            continue
        reuse = [lp for lp, rp in held.items() if rp == container and local in (None, lp)]
        if reuse:
            forwards.append(Forward(reuse[0], container, direct=True))
            taken.add(reuse[0])
            continue
        if local is None:
            local = next_free(container, host, taken)
        elif local in taken or not port_free(local, host):
            free = next_free(local + 1, host, taken)
            raise CLIError(
                f"Failed to {action}: port {local} is already in use. "
                f"Use `-p {free}:{container}` to forward it to the free port {free}."
            )
        taken.add(local)
        forwards.append(Forward(local, container))
    return forwards


def job_hosts(
    alias: str, jpd: Any, jrd: Any, identity: Path, relay: str | None = None
) -> tuple[list[SSHHost], str | None]:
    """The `Host` blocks that reach the job's sshd, or why the job has none.

    The job's sshd listens on the host's loopback. With RELAY (a ProxyCommand line: the
    server's relay, cli/ssh_relay.py) one block whose command carries the connection. Else, on
    the local backend that host is this machine; any other host is a ProxyJump (`<alias>-host`,
    itself behind `<alias>-jump-host` where the host has an SSH proxy) — the shape an SSH-fleet
    host needs.
    """
    ports = (jrd.ports or {}) if jrd is not None else {}
    sshd_port = ports.get(JOB_SSH_PORT)
    if jpd is None or jrd is None:
        return [], "the job has not started yet"
    if not sshd_port:
        return [], getattr(jrd, "ssh_error", None) or "the job has no SSH server (it did not start)"
    user = jrd.username or jpd.username or "root"
    if relay:
        return [SSHHost(alias, "", 0, user, identity, proxy_command=relay)], None
    if jpd.backend == "local":
        return [SSHHost(alias, "127.0.0.1", int(sshd_port), user, identity)], None
    hosts: list[SSHHost] = []
    jump = None
    proxy = jpd.ssh_proxy or None
    if proxy:
        jump = f"{alias}-jump-host"
        hosts.append(
            SSHHost(
                jump,
                str(proxy.get("hostname")),
                int(proxy.get("port") or 22),
                str(proxy.get("username") or "root"),
                identity,
            )
        )
    host_alias = f"{alias}-host"
    hosts.append(
        SSHHost(
            host_alias,
            jpd.hostname or jpd.internal_ip or "",
            int(jpd.ssh_port or 22),
            jpd.username or "root",
            identity,
            proxy_jump=jump,
        )
    )
    hosts.append(SSHHost(alias, "127.0.0.1", int(sshd_port), user, identity, host_alias))
    return hosts, None


class Tunnel:
    """`ssh -N` to the job with the forwards; alive while the CLI is attached."""

    def __init__(
        self,
        config: Path,
        alias: str,
        forwards: list[Forward],
        host: str,
        batch: bool = True,
        hint: str | None = None,
    ) -> None:
        """BATCH False lets ssh ask for a key's passphrase on the terminal; HINT is added to a
        failure (see ssh_passphrase)."""
        self.config, self.alias, self.host = config, alias, host
        self.batch, self.hint = batch, hint
        self.forwards = [f for f in forwards if not f.direct]
        self.dir = Path(tempfile.mkdtemp(prefix="dstack-ssh-"))  # short: socket paths are
        self.socket = self.dir / "control.sock"  # limited to ~100 characters
        self.proc: subprocess.Popen[str] | None = None

    def argv(self) -> list[str]:
        argv = [
            "ssh", "-F", str(self.config), "-N", "-M", "-S", str(self.socket),
            "-o", "ExitOnForwardFailure=yes", "-o", "ControlPersist=no",
            "-o", f"BatchMode={'yes' if self.batch else 'no'}",
        ]  # fmt: skip
        for f in self.forwards:
            target = f.target or f.remote_port
            argv += ["-L", f"{self.host}:{f.local_port}:127.0.0.1:{target}"]
        return [*argv, self.alias]

    def open(self, timeout: float = READY_TIMEOUT) -> None:
        if shutil.which("ssh") is None:
            raise CLIError("ssh is not installed; install OpenSSH to attach to runs")
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if not self.batch:  # the user is typing a passphrase
            timeout = max(timeout, 300.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else "").strip()
                self.close()
                hint = f" ({self.hint})" if self.hint else ""
                raise CLIError(
                    f"Failed to connect to {self.alias} over SSH: {err or 'ssh exited'}{hint}"
                )
            if self._check():
                return
            time.sleep(0.1)
        self.close()
        raise CLIError(f"Failed to connect to {self.alias} over SSH: timed out")

    def _check(self) -> bool:
        if not self.socket.exists():
            return False
        r = subprocess.run(
            ["ssh", "-S", str(self.socket), "-O", "check", self.alias],
            capture_output=True, stdin=subprocess.DEVNULL, timeout=10,
        )  # fmt: skip
        return r.returncode == 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self.proc.poll() is None:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
