"""Real SSH hosts for fleet tests: each an `sshd` in its own network namespace, with its own
address, host key, user and home directory.

A host is `dst4-<tag>-<i>`: namespace, veth pair (`d4<tag><i>h` on this side, `eth0` inside)
and Unix user share the name, so teardown removes exactly what setup made. A host added
`behind` another (a bastion) has its veth pair's outer end in the bastion's namespace, on a
private subnet of its own: only the bastion reaches it (no IP forwarding anywhere), which is
what a fleet's `proxy_jump` needs. The namespaces share
this machine's filesystem, so each host's user has its own home: "the host is left clean" is
checked on that home alone. Needs root, `ip` and `/usr/sbin/sshd`; tests skip without them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def available() -> str | None:
    """None when hosts can be made here, else why not (the skip reason)."""
    if os.geteuid() != 0:
        return "SSH host tests need root (network namespaces, users)"
    if not shutil.which("ip") or not os.path.exists(SSHD):
        return "SSH host tests need iproute2 and OpenSSH's sshd"
    return None


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def keygen(path: Path, kind: str = "ed25519") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _sh("ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path), "-C", path.name)
    os.chmod(path, 0o600)
    return path


@dataclass
class Host:
    name: str  # namespace, user and veth base name
    address: str
    gateway: str
    veth: str
    workdir: Path
    authorized_key: str
    port: int = 22
    path_env: str | None = None  # the PATH sessions get (None: sshd's default)
    # Sessions see an (empty) /proc/driver/nvidia, as on a host whose NVIDIA kernel driver is
    # loaded: sshd runs in its own mount namespace with a tmpfs over /proc/driver.
    fake_nvidia: bool = False
    behind: str | None = None  # the bastion's namespace, for a host only it can reach
    sshd_pid: int | None = None
    home: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home = Path("/home") / self.name

    # -- setup ------------------------------------------------------------------------------

    def create(self) -> None:
        _sh("ip", "netns", "add", self.name)
        _sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.veth + "p")
        _sh("ip", "link", "set", self.veth + "p", "netns", self.name)
        outer: tuple[str, ...] = ()
        if self.behind:
            _sh("ip", "link", "set", self.veth, "netns", self.behind)
            outer = ("ip", "netns", "exec", self.behind)
        _sh(*outer, "ip", "addr", "add", f"{self.gateway}/30", "dev", self.veth)
        _sh(*outer, "ip", "link", "set", self.veth, "up")
        ns = ("ip", "netns", "exec", self.name)
        _sh(*ns, "ip", "link", "set", "lo", "up")
        _sh(*ns, "ip", "link", "set", self.veth + "p", "name", "eth0")
        _sh(*ns, "ip", "addr", "add", f"{self.address}/30", "dev", "eth0")
        _sh(*ns, "ip", "link", "set", "eth0", "up")
        _sh(
            "useradd",
            "--create-home",
            "--home-dir",
            str(self.home),
            "--shell",
            "/bin/sh",
            self.name,
        )
        _sh("usermod", "-p", "*", self.name)  # no password, but not locked (sshd refuses those)
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(self.authorized_key + "\n")
        pw = pwd.getpwnam(self.name)
        for p in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.new_host_key()
        self.start_sshd()

    def new_host_key(self) -> None:
        key = self.workdir / "ssh_host_ed25519_key"
        for p in (key, key.with_suffix(".pub")):
            p.unlink(missing_ok=True)
        keygen(key)

    def sshd_config(self) -> Path:
        conf = self.workdir / "sshd_config"
        lines = [
            f"ListenAddress {self.address}:{self.port}",
            f"HostKey {self.workdir / 'ssh_host_ed25519_key'}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AllowUsers {self.name}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "AllowTcpForwarding yes",
            "UsePAM no",
            "StrictModes no",
            "LogLevel ERROR",
        ]
        if self.path_env:
            lines.append(f"SetEnv PATH={self.path_env}")
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start_sshd(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        conf = self.sshd_config()
        log = open(self.workdir / "sshd.log", "ab")  # noqa: SIM115
        cmd = [SSHD, "-D", "-e", "-f", str(conf)]
        if self.fake_nvidia:
            fake = "mount -t tmpfs dstack-fake /proc/driver && mkdir /proc/driver/nvidia"
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", fake + ' && exec "$@"']
            cmd += ["sh", SSHD, "-D", "-e", "-f", str(conf)]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.sshd_pid = proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.answers(self.behind):
                return
            if proc.poll() is not None:
                raise RuntimeError(f"sshd for {self.name} exited: {self.workdir / 'sshd.log'}")
            time.sleep(0.05)
        raise RuntimeError(f"sshd for {self.name} does not answer")

    def stop_sshd(self) -> None:
        """Stop the daemon and every session it serves: the host stops answering SSH."""
        if self.sshd_pid is None:
            return
        for pid in [*_descendants(self.sshd_pid), self.sshd_pid]:
            if _cmdline(pid).startswith("sshd"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.waitpid(self.sshd_pid, 0)
        self.sshd_pid = None

    # -- inspection -------------------------------------------------------------------------

    def answers(self, netns: str | None = None, timeout: float = 0.5) -> bool:
        """Whether the host's sshd answers (its `SSH-` banner, not just a TCP connect: a
        default route may lead to a gateway that accepts any connection) from `netns` (None:
        this namespace)."""
        probe = (
            "import socket, sys\n"
            "try:\n"
            f"    s = socket.create_connection(({self.address!r}, {self.port}), {timeout})\n"
            f"    s.settimeout({timeout})\n"
            "    sys.exit(0 if s.recv(4) == b'SSH-' else 1)\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        ns = ("ip", "netns", "exec", netns) if netns else ()
        return _sh(*ns, sys.executable, "-c", probe, check=False).returncode == 0

    def user_processes(self) -> list[int]:
        uid = pwd.getpwnam(self.name).pw_uid
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    cmd = _cmdline(int(entry.name))
                    if entry.stat().st_uid == uid and cmd and not cmd.startswith("sshd"):
                        out.append(int(entry.name))
        return out

    def home_entries(self) -> list[str]:
        return sorted(str(p.relative_to(self.home)) for p in self.home.rglob("*"))

    # -- teardown ---------------------------------------------------------------------------

    def destroy(self) -> None:
        self.stop_sshd()
        with contextlib.suppress(KeyError):
            for pid in self.user_processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.behind:
            _sh("ip", "-n", self.behind, "link", "del", self.veth, check=False)
        _sh("ip", "link", "del", self.veth, check=False)
        _sh("ip", "netns", "del", self.name, check=False)
        _sh("userdel", "--remove", "--force", self.name, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return os.path.basename(raw.split(b"\0")[0].decode(errors="replace"))


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Hosts:
    """A set of hosts for one test, torn down together (always, even after a failure)."""

    def __init__(self, workdir: Path, user_key: Path) -> None:
        self.workdir = workdir
        self.user_key = user_key
        self.tag = secrets.token_hex(2)
        self.hosts: list[Host] = []
        self._subnet = int(self.tag, 16) % 250

    def add(
        self,
        path_env: str | None = None,
        authorized_key: str | None = None,
        fake_nvidia: bool = False,
        behind: Host | None = None,
    ) -> Host:
        """A host; `behind` a bastion: on a private subnet (10.232.x.y/30) only it reaches."""
        i = len(self.hosts)
        name = f"dst4-{self.tag}-{i}"
        base = i * 4
        net = f"10.{232 if behind else 231}.{self._subnet}"
        host = Host(
            name=name,
            address=f"{net}.{base + 2}",
            gateway=f"{net}.{base + 1}",
            veth=f"d4{self.tag}{i}h",
            workdir=self.workdir / name,
            authorized_key=authorized_key or self.user_key.with_suffix(".pub").read_text().strip(),
            path_env=path_env,
            fake_nvidia=fake_nvidia,
            behind=behind.name if behind else None,
        )
        self.hosts.append(host)
        host.create()
        return host

    def destroy(self) -> None:
        for host in reversed(self.hosts):  # hosts behind a bastion before the bastion
            host.destroy()
