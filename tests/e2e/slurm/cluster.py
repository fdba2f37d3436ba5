"""A real Slurm cluster on this machine, for the slurm backend's tests.

Layout (docs/slurm-tests.md has the facts behind each choice):
- a "login" host: a network namespace with `sshd` (reused from ssh/hosts.py: its own Unix
  user, home under /home, the server's key authorized) and `slurmctld`; the server reaches it
  from this namespace at `login_address`;
- two compute hosts: namespaces with `slurmd`, each with its own UTS name (so `hostname` in a
  job names its node). Their links end in the login namespace, not here, and the login
  namespace forwards between them: the login host and the nodes reach each other, the nodes
  reach each other through it, and nothing in this namespace reaches a node (as on a real
  cluster's private network). No sysctl of this namespace changes;
- one `munged` (its socket is a file, so every namespace shares it).

Configuration goes to `/etc/netns/<ns>/` (`hosts`, `slurm/` -> the runtime directory), which
`ip netns exec` binds over /etc, so every process in a namespace, SSH logins included, finds
it without any environment. All hosts share this machine's filesystem: the login user's home
is the same directory on the login host and on the nodes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from ..ssh.hosts import SSHD, Host, keygen
from . import config
from .config import Node, Partition

BINARIES = ("slurmctld", "slurmd", "munged", "sinfo", "sbatch")
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def available() -> str | None:
    """None when a cluster can be made here, else why not (the skip reason)."""
    if os.geteuid() != 0:
        return "Slurm cluster tests need root (network namespaces, users, daemons)"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "Slurm cluster tests need iproute2 and unshare"
    if not os.path.exists(SSHD):
        return "Slurm cluster tests need OpenSSH's sshd"
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        return f"Slurm cluster tests need {', '.join(missing)} (packages slurm-wlm, munge)"
    return None


def _sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


class SlurmError(RuntimeError):
    pass


class SlurmCluster:
    """`start()` brings the cluster up (idle nodes), `stop()` removes every trace of it: call
    it always, also after a failed start."""

    def __init__(
        self, workdir: Path, gpu_node: bool = True, ready_timeout: float = 60, docker: bool = False
    ) -> None:
        """`docker`: the login user joins this machine's `docker` group, so jobs on the nodes
        (which share the machine's filesystem, the engine's socket included) can use Docker."""
        self.workdir = workdir
        self.docker = docker
        self.ready_timeout = ready_timeout
        self.tag = os.urandom(2).hex()
        subnet = int(self.tag, 16) % 250
        self.ctl_host = socket.gethostname().split(".")[0]
        self.login_ns = f"dsl-{self.tag}"
        self._login: Host | None = None
        self._login_address = f"10.236.{subnet}.2"
        self.nodes = [
            Node(
                name=f"n{self.tag}-{i}",
                address=f"10.237.{subnet}.{4 * i + 2}",
                gateway=f"10.237.{subnet}.{4 * i + 1}",
                gpus=config.GPU_COUNT if (gpu_node and i == 1) else 0,
            )
            for i in range(2)
        ]
        self.partitions: list[Partition] = config.partitions_for(self.nodes)
        self.run_dir: Path | None = None
        self.started_in: float | None = None  # seconds start() took
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- properties the tests and the backend's e2e tests use -------------------------------

    @property
    def login_address(self) -> str:
        return self._login_address

    @property
    def user(self) -> str:
        return self.login_ns  # hosts.Host names its user after its namespace

    @property
    def home(self) -> Path:
        return Path("/home") / self.user

    @property
    def key_path(self) -> Path:
        return self.workdir / "keys" / "id_slurm"

    @property
    def host_key(self) -> str:
        """sshd's public host key on the login host, as OpenSSH writes it (to pin)."""
        if self._login is None:
            raise SlurmError("the cluster is not started")
        return (self._login.workdir / "ssh_host_ed25519_key.pub").read_text().strip()

    def backend_config(self, name: str = "hpc") -> dict[str, object]:
        """The server's `config.yml` backend entry for this cluster (the key path, the host key
        pinned), as a user writes it; `docker: true` when the cluster was made with Docker."""
        cluster: dict[str, object] = {
            "name": name,
            "hostname": self.login_address,
            "port": 22,
            "user": self.user,
            "private_key": {"path": str(self.key_path)},
            "host_key": self.host_key,
        }
        if self.docker:
            cluster["docker"] = True
        return {"type": "slurm", "clusters": [cluster]}

    @property
    def slurm_conf(self) -> Path:
        return self._conf_dir / "slurm.conf"

    @property
    def _conf_dir(self) -> Path:
        if self.run_dir is None:
            raise SlurmError("the cluster is not started")
        return self.run_dir / "etc"

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def node_ns(self, name: str) -> str:
        return f"{self.login_ns}-{name.rsplit('-', 1)[1]}"

    # -- start ------------------------------------------------------------------------------

    def start(self) -> SlurmCluster:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The user must traverse it (munge socket, spool, configuration): not under pytest's
        # root-only temporary directory.
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"dstack-slurm-{self.tag}-"))
        os.chmod(self.run_dir, 0o755)
        for sub in ("etc", "munge", "log", "spool", "ctld-state"):
            (self.run_dir / sub).mkdir(mode=0o755)
        for n in self.nodes:
            (self.run_dir / "spool" / n.name).mkdir(mode=0o755)
        for old in (self.key_path, self.key_path.with_suffix(".pub")):
            old.unlink(missing_ok=True)
        keygen(self.key_path)
        self._write_config()
        self._login = Host(
            name=self.login_ns,
            address=self._login_address,
            gateway=self._login_address.rsplit(".", 1)[0] + ".1",
            veth=f"d5{self.tag}lh",
            workdir=self.workdir / "login",
            authorized_key=self.key_path.with_suffix(".pub").read_text().strip(),
        )
        self._login.create()
        if self.docker:  # before any slurmd starts a job: its groups are read at launch
            _sh("usermod", "-aG", "docker", self.user)
        _sh("ip", "netns", "exec", self.login_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for n in self.nodes:
            self._add_node_link(n)
        self._start_munged()
        self._start_slurmctld()
        for n in self.nodes:
            self.start_node(n.name)
        self.wait_ready()
        self.started_in = time.monotonic() - t0
        return self

    def _write_config(self) -> None:
        assert self.run_dir is not None
        munge_socket = self.run_dir / "munge" / "munge.socket"
        conf = config.slurm_conf(
            self.ctl_host, self._login_address, self.run_dir, self.nodes, munge_socket
        )
        (self._conf_dir / "slurm.conf").write_text(conf)
        (self._conf_dir / "cgroup.conf").write_text(config.cgroup_conf())
        dev = self.run_dir / "dev"
        dev.mkdir(mode=0o755)
        for n in self.nodes:
            for i in range(n.gpus):
                os.mknod(dev / f"{n.name}-gpu{i}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        (self._conf_dir / "gres.conf").write_text(config.gres_conf(self.nodes, dev))
        hosts = config.hosts_file(self.ctl_host, self._login_address, self.nodes)
        for ns in [self.login_ns, *(self.node_ns(n.name) for n in self.nodes)]:
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts)
            (etc / "slurm").symlink_to(self._conf_dir)

    def _add_node_link(self, n: Node) -> None:
        """A point-to-point link from the login namespace to the node's, default route via the
        login host (which forwards to the other node)."""
        ns = self.node_ns(n.name)
        veth = f"d5{self.tag}{n.name[-1]}h"
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p")
        _sh("ip", "link", "set", veth + "p", "netns", ns)
        _sh("ip", "link", "set", veth, "netns", self.login_ns)
        login = ("ip", "-n", self.login_ns)
        _sh(*login, "addr", "add", f"{n.gateway}/30", "dev", veth)
        _sh(*login, "link", "set", veth, "up")
        node = ("ip", "-n", ns)
        _sh(*node, "link", "set", "lo", "up")
        _sh(*node, "link", "set", veth + "p", "name", "eth0")
        _sh(*node, "addr", "add", f"{n.address}/30", "dev", "eth0")
        _sh(*node, "link", "set", "eth0", "up")
        _sh(*node, "route", "add", "default", "via", n.gateway)

    def _spawn(self, key: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        assert self.run_dir is not None
        log = open(self.run_dir / "log" / f"{key}.out", "ab")  # noqa: SIM115
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self._procs[key] = proc
        return proc

    def _start_munged(self) -> None:
        assert self.run_dir is not None
        m = self.run_dir / "munge"
        log = self.run_dir / "log" / "munged.log"
        key = self.workdir / "munge.key"
        _sh("mungekey", "--create", "--keyfile", str(key), "--force")
        os.chmod(key, 0o600)
        self._spawn(
            "munged",
            ["munged", "--foreground", "--force", f"--key-file={key}",
             f"--socket={m / 'munge.socket'}", f"--pid-file={m / 'munged.pid'}",
             f"--seed-file={m / 'munged.seed'}", f"--log-file={log}"],
        )  # fmt: skip
        self._wait(lambda: (m / "munge.socket").exists(), 10, "munged's socket")

    def _start_slurmctld(self) -> None:
        self._spawn("slurmctld", ["ip", "netns", "exec", self.login_ns, "slurmctld", "-D", "-i"])
        self._wait(self._ctld_answers, 20, "slurmctld")

    def _ctld_answers(self) -> bool:
        return self.run_login("scontrol ping", root=True).stdout.count("UP") > 0

    def start_node(self, name: str) -> None:
        """slurmd for `name`: its own UTS name, an empty tmpfs over /sys/fs/cgroup (slurmd
        refuses the namespace's bare sysfs), `-N` for its node name."""
        ns = self.node_ns(name)
        script = (
            f"mount -t tmpfs none /sys/fs/cgroup && hostname {name} && exec slurmd -D -N {name}"
        )
        cmd = ["ip", "netns", "exec", ns, "unshare", "-u", "sh", "-c", script]
        self._spawn(f"slurmd-{name}", cmd)

    def kill_node(self, name: str) -> None:
        """The node dies: slurmd, its steps and the jobs' processes are killed at once (what
        slurmctld sees is a node that stops answering)."""
        _kill_netns(self.node_ns(name))
        proc = self._procs.pop(f"slurmd-{name}", None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    # -- use --------------------------------------------------------------------------------

    def run_login(
        self, cmd: str, root: bool = False, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """`cmd` (a shell line) on the login host, as the login user (or root), in its home."""
        as_user = () if root else ("runuser", "-u", self.user, "--")
        env = {"PATH": USER_PATH, "HOME": str(self.home), "USER": self.user, "LANG": "C.UTF-8"}
        return subprocess.run(
            ["ip", "netns", "exec", self.login_ns, *as_user, "sh", "-c", cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=self.home if self.home.exists() else "/",
        )

    def ssh_argv(self, *options: str) -> list[str]:
        """An `ssh` command line to the login host from this namespace, as the server logs in:
        the login user with the key, the host key pinned (a `known_hosts` in the workdir).
        `options` go before the destination (e.g. `-W node:port`)."""
        known = self.workdir / "known_hosts"
        known.write_text(f"{self.login_address} {self.host_key}\n")
        return [
            "ssh", "-i", str(self.key_path), "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            *options, f"{self.user}@{self.login_address}",
        ]  # fmt: skip

    def ssh(self, cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`cmd` on the login host over SSH (see `ssh_argv`)."""
        return subprocess.run(
            [*self.ssh_argv(), cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def node_states(self) -> dict[str, str]:
        """{node: sinfo's compact state (`idle`, `mix`, `alloc`, `down*`, ...)}"""
        rows = self.run_login("sinfo -h -N -o '%N %t'").stdout.splitlines()
        return dict(tuple(r.split()) for r in rows if len(r.split()) == 2)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Every node `idle` in sinfo, else a SlurmError with the daemons' logs."""
        want = {n.name: "idle" for n in self.nodes}
        self._wait(lambda: self.node_states() == want, timeout or self.ready_timeout, "idle nodes")

    def _wait(self, ok: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():  # type: ignore[operator]
                return
            for key, proc in self._procs.items():
                if proc.poll() is not None:
                    raise SlurmError(f"{key} exited ({proc.returncode}) waiting for {what}\n"
                                     + self.logs())  # fmt: skip
            time.sleep(0.2)
        raise SlurmError(f"timed out after {timeout}s waiting for {what}\n" + self.logs())

    def logs(self, tail: int = 40) -> str:
        """The last lines of every daemon's log, for failure messages."""
        if self.run_dir is None:
            return ""
        parts = []
        for f in sorted((self.run_dir / "log").iterdir()):
            with contextlib.suppress(OSError):
                lines = f.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- stop -------------------------------------------------------------------------------

    def stop(self) -> None:
        for n in self.nodes:
            _kill_netns(self.node_ns(n.name))
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
        _kill_netns(self.login_ns)
        if self._login is not None:
            self._login.destroy()  # sshd, the user's processes, veth, namespace, user, home
        for n in self.nodes:
            _sh("ip", "netns", "del", self.node_ns(n.name), check=False)
        for ns in [self.login_ns, *(self.node_ns(n.name) for n in self.nodes)]:
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        if self.run_dir is not None:
            with contextlib.suppress(OSError):
                shutil.copytree(self.run_dir / "log", self.workdir / "logs", dirs_exist_ok=True)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None


def _kill_netns(ns: str) -> None:
    """SIGKILL every process whose network namespace is `ns`."""
    out = _sh("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in out:
        if pid.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
