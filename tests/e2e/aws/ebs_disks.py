"""EBS volumes that hold data on the booted test hosts.

moto keeps a volume's attachments but no bytes. `EBSDisks` gives each EBS volume a "disk": a
directory under the test's tmp dir, keyed by the volume id, so its data outlives instances.
When moto reports the volume attached to a booted instance at device D, the disk is
bind-mounted onto `<home>/.dstack-agent/state/mnt/<basename of D>` (`state` is the agent's
home) inside that host's mount namespace (where its sshd, and so its agent and jobs, live);
when moto reports the detach, it is unmounted. That is the agent's "already a mount point"
case of the volume contract: the agent mounts nothing and formats nothing, and no product
code knows it runs in a test.

What a real instance does that this does not: the block device itself (`D` does not exist on
the test host; on Nitro instances it would be `/dev/nvme*n1`), the delay between EC2's
`attached` and the device showing up, and a detach that hangs while the filesystem is busy
(here a busy mount is unmounted lazily).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ec2_hosts import BootedHost, MotoEC2

AGENT_DIR = ".dstack-agent"  # the SSH bootstrap's directory in the user's home
# Root volumes are the instance's own disk, never mounted under the agent's directory.
ROOT_DEVICES = frozenset({"/dev/sda1", "/dev/xvda"})


@dataclass(frozen=True)
class Mounted:
    ebs_id: str
    ec2_id: str
    device: str
    target: str  # the mount point, as the host sees it


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


class EBSDisks:
    def __init__(self, moto: MotoEC2, root: Path, user: str) -> None:
        self.moto = moto
        self.root = root
        self.user = user
        self.mounts: dict[str, Mounted] = {}  # by EBS volume id
        self.log: list[str] = []  # "mount vol-x i-y /dev/sdf", "umount ..." in order
        self._lock = threading.Lock()

    # -- what tests use -----------------------------------------------------------------------

    def disk(self, ebs_id: str) -> Path:
        """The volume's data, as this machine sees it (created on first use, owned by the
        hosts' user so jobs can write to it)."""
        path = self.root / ebs_id
        if not path.exists():
            pw = pwd.getpwnam(self.user)
            path.mkdir(parents=True, mode=0o755)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return path

    def disk_of(self, name: str) -> Path:
        """The disk of the one live volume tagged `Name=name` (the volume's name in dstack)."""
        res = self.moto.client().describe_volumes(
            Filters=[
                {"Name": "tag:Name", "Values": [name]},
                {"Name": "status", "Values": ["creating", "available", "in-use"]},
            ]
        )
        ids = [v["VolumeId"] for v in res.get("Volumes", [])]
        if len(ids) != 1:
            raise AssertionError(f"expected one live volume named {name}, found {ids}")
        return self.disk(ids[0])

    def mount_point(self, device: str) -> str:
        home = pwd.getpwnam(self.user).pw_dir
        return f"{home}/{AGENT_DIR}/state/mnt/{os.path.basename(device)}"

    def wait_mounted(self, ebs_id: str, ec2_id: str | None, timeout: float = 10) -> Mounted | None:
        """The volume's mount once it is on `ec2_id` (None: once it is on no host)."""
        deadline = time.monotonic() + timeout
        m = None
        while time.monotonic() < deadline:
            with self._lock:
                m = self.mounts.get(ebs_id)
            if (m.ec2_id if m else None) == ec2_id:
                return m
            time.sleep(0.05)
        raise AssertionError(f"{ebs_id} is not mounted on {ec2_id} after {timeout} s: {m}")

    # -- the watcher's part ---------------------------------------------------------------------

    def sync(self, hosts: dict[str, BootedHost]) -> None:
        """Make the mounts follow moto's attachments (called by `BootWatcher` each round,
        after it dropped the hosts moto terminated)."""
        want = self._attached(hosts)
        with self._lock:
            for ebs_id, m in list(self.mounts.items()):
                if want.get(ebs_id) == (m.ec2_id, m.device):
                    continue
                host = hosts.get(m.ec2_id)
                if host is not None:  # a destroyed host's mounts died with its namespace
                    self._umount(host, m)
                del self.mounts[ebs_id]
            for ebs_id, (ec2_id, device) in want.items():
                if ebs_id not in self.mounts:
                    self.mounts[ebs_id] = self._mount(hosts[ec2_id], ebs_id, device)

    def _attached(self, hosts: dict[str, BootedHost]) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for vol in self.moto.client().describe_volumes().get("Volumes", []):
            for a in vol.get("Attachments", []):
                ok = a.get("State") == "attached" and a.get("Device") not in ROOT_DEVICES
                if ok and a.get("InstanceId") in hosts and hosts[a["InstanceId"]].sshd_pid:
                    out[vol["VolumeId"]] = (a["InstanceId"], a["Device"])
        return out

    def _mount(self, host: BootedHost, ebs_id: str, device: str) -> Mounted:
        target = self.mount_point(device)
        self._make_mount_point(host, device)
        res = host.run("mount", "--bind", str(self.disk(ebs_id)), target)
        if res.returncode != 0:
            raise RuntimeError(f"mounting {ebs_id} on {host.ec2_id}: {res.stderr.strip()}")
        self.log.append(f"mount {ebs_id} {host.ec2_id} {device}")
        return Mounted(ebs_id, host.ec2_id, device, target)

    def _make_mount_point(self, host: BootedHost, device: str) -> None:
        """`<home>/.dstack-agent/state/mnt/<dev>`, made through this side's view of the host's home
        (the same directory the namespace has bind-mounted as the home), owned by the user."""
        pw = pwd.getpwnam(self.user)
        path = host.home
        for part in (AGENT_DIR, "state", "mnt", os.path.basename(device)):
            path = path / part
            if not path.exists():
                path.mkdir(mode=0o755)
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def _umount(self, host: BootedHost, m: Mounted) -> None:
        if host.run("umount", m.target).returncode != 0:
            host.run("umount", "-l", m.target)  # busy: a real detach would hang instead
        self.log.append(f"umount {m.ebs_id} {m.ec2_id} {m.device}")

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {k: (m.ec2_id, m.device) for k, m in self.mounts.items()}
