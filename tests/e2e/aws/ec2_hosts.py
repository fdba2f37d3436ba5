"""A real EC2 API (moto in server mode, on loopback) whose instances really boot.

moto keeps EC2's state and answers every boto3 call over HTTP, but nothing it "runs" exists.
`BootWatcher` closes that gap: it polls moto, and for each running instance it starts an
`sshd` in a network namespace at the instance's private address, letting in the key pair the
instance was launched with, as the AMI's user. The server then finds a host where EC2 says one
is, bootstraps its agent over SSH and runs jobs there. An instance terminated in moto (by the
server, or by a test playing EC2 reclaiming a spot instance) loses its host.

Volumes: `EBSDisks` (ebs_disks.py) makes each EBS volume moto reports attached to a booted
instance a real directory at the agent's mount point on that host; `BootWatcher.disks.disk(id)`
is the volume's data as this machine sees it.

Each host has its own view of the user's home (a private bind mount in sshd's mount
namespace), so two instances never share an agent directory although they share the user.
Addresses: the instance's address on the namespace's side, a point-to-point peer on this
side (any address of the VPC's range works, even .0). Needs root, `ip`, `unshare`, sshd.
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from ..ssh.hosts import SSHD, keygen
from .ebs_disks import EBSDisks

REGION = "us-east-1"
AMI_NAME = "ubuntu/images/hvm-ssd/ubuntu-xenial-16.04-amd64-server-20170721"
AMI_OWNER = "099720109477"


def available() -> str | None:
    if os.geteuid() != 0:
        return "EC2 host tests need root (network namespaces, users)"
    for tool in ("ip", "unshare"):
        if not shutil.which(tool):
            return f"EC2 host tests need {tool}"
    if not shutil.which("nsenter"):
        return "EC2 host tests need nsenter (volume mounts inside a host)"
    if not os.path.exists(SSHD):
        return "EC2 host tests need OpenSSH's sshd"
    try:
        import moto  # noqa: F401
    except ImportError:
        return "EC2 host tests need moto"
    return None


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


class MotoEC2:
    """moto's server on a free loopback port; `env()` points boto3 (ours and the server's)
    at it through AWS_ENDPOINT_URL, which boto3 reads by itself."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        from ..harness import free_port

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, service: str = "ec2", region: str = REGION) -> Any:
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def make_vpc(self, name: str, cidr: str) -> tuple[str, str]:
        """A named VPC with one subnet over its whole range: (vpc id, subnet id)."""
        ec2 = self.client()
        vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
        ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": name}])
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=REGION + "a")
        return vpc, subnet["Subnet"]["SubnetId"]

    def instances(self, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        filters = [{"Name": "instance-state-name", "Values": list(states)}] if states else []
        res = self.client().describe_instances(Filters=filters)
        return [i for r in res.get("Reservations", []) for i in r.get("Instances", [])]

    def stop(self) -> None:
        """moto keeps its state per process, not per server: reset it for the next test."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(self.url + "/moto-api/reset", method="POST"))
        self.server.stop()


@dataclass
class BootedHost:
    ec2_id: str
    ns: str
    address: str
    peer: str
    veth: str
    home: Path  # this host's own view of the user's home
    sshd_pid: int | None = None

    def run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        """`cmd` as root inside the host's mount namespace (where its sshd, agent and jobs see
        their files)."""
        if not self.sshd_pid:
            raise RuntimeError(f"{self.ec2_id} has no sshd")
        return _sh("nsenter", "-t", str(self.sshd_pid), "-m", "--", *cmd, check=False)

    def processes(self) -> list[int]:
        out = _sh("ip", "netns", "pids", self.ns, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def destroy(self) -> None:
        """The machine is gone: every process in its namespace dies, its address with it."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _sh("ip", "link", "del", self.veth, check=False)
        _sh("ip", "netns", "del", self.ns, check=False)


@dataclass
class BootWatcher:
    """Boots moto's running instances as SSH hosts, and kills those moto terminated."""

    moto: MotoEC2
    workdir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    hosts: dict[str, BootedHost] = field(default_factory=dict)
    # Instances a test wants never to boot (a provisioning timeout).
    hold: set[str] = field(default_factory=set)
    hold_all: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)
    disks: EBSDisks | None = None  # made on start, when the hosts' user exists

    @property
    def user(self) -> str:
        return f"dsaw{self.tag}"

    def start(self) -> BootWatcher:
        _sh("useradd", "--create-home", "--shell", "/bin/sh", self.user)
        _sh("usermod", "-p", "*", self.user)
        self.disks = EBSDisks(self.moto, self.workdir / "ebs", self.user)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as e:  # noqa: BLE001 - reported by the test, never silent
                self.errors.append(repr(e))
            self._stop.wait(0.2)

    def sync(self) -> None:
        live = {}
        for inst in self.moto.instances():
            state = inst["State"]["Name"]
            if state in ("pending", "running"):
                live[inst["InstanceId"]] = inst
        for ec2_id in [i for i in self.hosts if i not in live]:
            self.hosts.pop(ec2_id).destroy()
        for ec2_id, inst in live.items():
            if ec2_id in self.hosts or ec2_id in self.hold or self.hold_all:
                continue
            if inst["State"]["Name"] == "running" and inst.get("PrivateIpAddress"):
                self.hosts[ec2_id] = self.boot(inst)
        if self.disks is not None:
            self.disks.sync(self.hosts)

    def boot(self, inst: dict[str, Any]) -> BootedHost:
        i = len(self.hosts) + len(self.errors)
        ec2_id = inst["InstanceId"]
        address = inst["PrivateIpAddress"]
        host = BootedHost(
            ec2_id=ec2_id,
            ns=f"dsaw-{self.tag}-{ec2_id[-6:]}",
            address=address,
            peer=f"10.233.{int(self.tag, 16) % 250}.{(i % 250) + 1}",
            veth=f"da{self.tag}{ec2_id[-4:]}",
            home=self.workdir / ec2_id / "home",
        )
        _sh("ip", "netns", "add", host.ns)
        _sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", host.veth + "p")
        _sh("ip", "link", "set", host.veth + "p", "netns", host.ns)
        _sh("ip", "addr", "add", host.peer, "peer", address, "dev", host.veth)
        _sh("ip", "link", "set", host.veth, "up")
        ns = ("ip", "netns", "exec", host.ns)
        _sh(*ns, "ip", "link", "set", "lo", "up")
        _sh(*ns, "ip", "addr", "add", address, "peer", host.peer, "dev", host.veth + "p")
        _sh(*ns, "ip", "link", "set", host.veth + "p", "up")
        self._home(host, self._public_key(inst["KeyName"]))
        self._sshd(host)
        return host

    def _public_key(self, key_name: str) -> str:
        res = self.moto.client().describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)
        return res["KeyPairs"][0]["PublicKey"].strip()

    def _home(self, host: BootedHost, public_key: str) -> None:
        pw = pwd.getpwnam(self.user)
        ssh_dir = host.home / ".ssh"
        ssh_dir.mkdir(parents=True, mode=0o700)
        (ssh_dir / "authorized_keys").write_text(public_key + "\n")
        for p in (host.home, ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        os.chmod(ssh_dir / "authorized_keys", 0o600)

    def _sshd(self, host: BootedHost) -> None:
        work = host.home.parent
        key = keygen(work / "ssh_host_ed25519_key")
        conf = work / "sshd_config"
        conf.write_text(
            "\n".join(
                [
                    f"ListenAddress {host.address}:22",
                    f"HostKey {key}",
                    f"PidFile {work / 'sshd.pid'}",
                    f"AllowUsers {self.user}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "AllowTcpForwarding yes",
                    "UsePAM no",
                    "StrictModes no",
                    "LogLevel ERROR",
                ]
            )
            + "\n"
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        home = pwd.getpwnam(self.user).pw_dir
        script = f'mount --bind "{host.home}" "{home}" && exec "$@"'
        log = open(work / "sshd.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, "unshare", "-m", "--propagation", "private",
             "sh", "-c", script, "sh", SSHD, "-D", "-e", "-f", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        host.sshd_pid = proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _answers(host):
                return
            if proc.poll() is not None:
                raise RuntimeError(f"sshd for {host.ec2_id} exited: {work / 'sshd.log'}")
            time.sleep(0.05)
        raise RuntimeError(f"sshd for {host.ec2_id} does not answer")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        for host in self.hosts.values():
            host.destroy()
        self.hosts.clear()
        _sh("userdel", "--remove", "--force", self.user, check=False)


def _answers(host: BootedHost, timeout: float = 0.5) -> bool:
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    s = socket.create_connection(({host.address!r}, 22), {timeout})\n"
        f"    s.settimeout({timeout})\n"
        "    sys.exit(0 if s.recv(4) == b'SSH-' else 1)\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    return _sh(sys.executable, "-c", probe, check=False).returncode == 0
