"""A job's volumes on the host: where each one's data is, and how the job sees it.

Three kinds arrive in the start spec (`spec.py` validates them):
- `network`: a block device the server attached (`device`); mounted once per host at
  `<agent home>/mnt/<basename of device>` (formatted ext4 first when it holds no
  filesystem), or used as is when that path already is a mount point.
- `directory`: `<volumes root>/<volume id>`, created at job start; the root is
  `~/.dstack-volumes` of the agent's user, outside the agent's home, so the data outlives the
  agent's files (an SSH host's teardown removes the agent's home, never this). A root agent's
  job run as another user (jobuser.py) cannot enter root's home, so a directory volume first
  used by such a job lives in `/var/lib/dstack-volumes/<volume id>` instead (root-owned 0711
  base; DSTACK_AGENT_SHARED_VOLUMES_DIR overrides); a volume stays where it was first created.
  Its directory is given to the job's user when a job of that user starts on it.
- `instance`: a host directory (`instance_path`); `optional` ones that do not exist are
  skipped.

The docker runtime bind-mounts each at its `path` (`:ro` when read-only). The process runtime
has no container: `path` becomes a symlink to the host directory when it does not exist and
its parent is writable (removed when the job ends); the job is refused otherwise. Either way
`DSTACK_VOLUME_<NAME>_PATH` holds the real host directory. Read-only is not enforced for
processes (docs/agent.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from dstack.agent import jobuser

VOLUMES_DIR_ENV = "DSTACK_AGENT_VOLUMES_DIR"
SHARED_VOLUMES_DIR_ENV = "DSTACK_AGENT_SHARED_VOLUMES_DIR"
MOUNT_DIR = "mnt"
LINKS_FILE = "volume_links.json"
_COMMAND_TIMEOUT = 300.0


class VolumeError(Exception):
    """The job cannot have one of its volumes; the message says which and why."""


def volumes_root() -> Path:
    override = os.environ.get(VOLUMES_DIR_ENV)
    return Path(override) if override else Path.home() / ".dstack-volumes"


def shared_root() -> Path:
    return Path(os.environ.get(SHARED_VOLUMES_DIR_ENV) or "/var/lib/dstack-volumes")


def _give(source: Path, ident: dict[str, Any]) -> None:
    """Make the volume's data the job user's (once per change of user). fwalk through
    directory fds and no symlink followed: a former owner swapping a folder for a link while
    this runs cannot make root chown anything outside the volume."""
    if os.lstat(source).st_uid == ident["uid"]:
        return
    uid, gid = ident["uid"], ident["gid"]
    for _, dirnames, filenames, dir_fd in os.fwalk(source, follow_symlinks=False):
        for name in dirnames + filenames:
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    os.chown(source, uid, gid, follow_symlinks=False)  # last: the marker that it is done


def _directory_source(v: dict[str, Any], ident: dict[str, Any] | None) -> Path:
    own, shared = volumes_root() / v["volume_id"], shared_root() / v["volume_id"]
    other_user = ident is not None and ident["uid"] != os.geteuid()
    if own.is_dir() or (not other_user and not shared.is_dir()):
        source = own
    else:
        source = shared
        if not shared.parent.is_dir():
            shared.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
            os.chmod(shared.parent, 0o711)
    source.mkdir(parents=True, exist_ok=True)
    if other_user:
        assert ident is not None
        if not jobuser.reachable(source, ident):
            raise VolumeError(
                f"volume {v['name']}: its data is in {source}, which user {ident['name']} "
                f"cannot reach; move it to {shared} or run the job as root (`user: root`)"
            )
        _give(source, ident)
    return source


def env_name(name: str) -> str:
    """`DSTACK_VOLUME_<NAME>_PATH`, the name upper-cased with anything else as `_`."""
    return "DSTACK_VOLUME_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_PATH"


def prepare(
    volumes: list[dict[str, Any]], home: Path, ident: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Each volume's host directory, as binds `{source, path, read_only, name}`, in spec
    order; VolumeError when one cannot be had (a missing optional instance path is skipped).
    `ident`: the user a process job runs as (jobuser.py), None for the agent's own."""
    binds = []
    for v in volumes:
        kind = v["kind"]
        if kind == "directory":
            try:
                source = _directory_source(v, ident)
            except OSError as e:
                raise VolumeError(f"volume {v['name']}: cannot create {source}: {e}") from None
        elif kind == "network":
            source = _mount_network(v, home)
        else:
            source = Path(v["instance_path"])
            if not source.exists():
                if v.get("optional"):
                    continue
                raise VolumeError(
                    f"instance volume {source} does not exist on the host "
                    "(set `optional: true` to run without it)"
                )
        binds.append(
            {
                "source": str(source),
                "path": v["path"],
                "read_only": bool(v.get("read_only")),
                "name": v.get("name"),
            }
        )
    return binds


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as e:
        return subprocess.CompletedProcess(argv, 127, "", str(e))


# How long a network volume's device may take to show up after the attach.
DEVICE_WAIT_SECONDS = 15.0


def is_mount_point(path: Path) -> bool:
    """Whether something is mounted at `path`. `os.path.ismount` misses a bind mount of a
    directory from the same filesystem (same device number), so the kernel's own list of this
    process's mounts is read first where there is one (Linux)."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return os.path.ismount(path)
    target = os.path.realpath(path)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == target:
            return True
    return False


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _present_device(v: dict[str, Any], home: Path, wait: float) -> str | None:
    """The device path that exists (the one the server named, else an alias such as the NVMe
    name a Nitro instance gives an EBS volume), waiting a little: a device shows up on the
    host a moment after the cloud reports it attached. None once the mount point is already
    mounted (someone mounted it for us)."""
    point = home / MOUNT_DIR / os.path.basename(v["device"])
    deadline = time.monotonic() + wait
    while True:
        if is_mount_point(point):
            return None
        for candidate in [v["device"], *(v.get("device_aliases") or [])]:
            if os.path.exists(candidate):
                return candidate
        if time.monotonic() >= deadline:
            raise VolumeError(f"device {v['device']} of volume {v['name']} is not present")
        time.sleep(0.5)


def _mount_network(v: dict[str, Any], home: Path, wait: float = DEVICE_WAIT_SECONDS) -> Path:
    point = home / MOUNT_DIR / os.path.basename(v["device"])
    device = _present_device(v, home, wait)
    if device is None:
        return point
    point.mkdir(parents=True, exist_ok=True)
    probe = _run([*_sudo(), "blkid", "-p", device])
    if probe.returncode == 2:  # blkid: no filesystem found
        made = _run([*_sudo(), "mkfs.ext4", "-q", device])
        if made.returncode != 0:
            raise VolumeError(f"volume {v['name']}: mkfs.ext4 {device} failed: {made.stderr}")
    elif probe.returncode != 0:
        raise VolumeError(f"volume {v['name']}: blkid -p {device} failed: {probe.stderr}")
    mounted = _run([*_sudo(), "mount", device, str(point)])
    if mounted.returncode != 0:
        raise VolumeError(f"volume {v['name']}: mount {device} failed: {mounted.stderr}")
    return point


def docker_args(binds: list[dict[str, Any]]) -> list[str]:
    args = []
    for b in binds:
        args += ["-v", f"{b['source']}:{b['path']}" + (":ro" if b["read_only"] else "")]
    return args


def volume_env(binds: list[dict[str, Any]]) -> dict[str, str]:
    return {env_name(b["name"]): b["source"] for b in binds if b.get("name")}


def link_for_process(binds: list[dict[str, Any]]) -> list[str]:
    """Make each bind's `path` a symlink to its host directory; returns the links made (to
    remove when the job ends). A `path` that is already the host directory, or a link to it,
    is left as is."""
    made: list[str] = []
    for b in binds:
        path, source = Path(b["path"]), Path(b["source"])
        if path.is_symlink() and os.path.realpath(path) == os.path.realpath(source):
            continue
        if path.exists() and os.path.realpath(path) == os.path.realpath(source):
            continue
        what = f"volume {b['name']}" if b.get("name") else f"instance volume {source}"
        if path.exists() or path.is_symlink():
            raise VolumeError(
                f"{what}: {path} already exists on the host, so it cannot be made to point to "
                f"{source} (the process runtime has no container); use another path"
                + (f" or read ${env_name(b['name'])}" if b.get("name") else "")
            )
        if not os.access(path.parent, os.W_OK):
            raise VolumeError(
                f"{what}: cannot create {path} (its parent is missing or not writable by the "
                f"agent's user); on the process runtime the data is at {source}"
                + (f", in ${env_name(b['name'])}" if b.get("name") else "")
            )
        path.symlink_to(source, target_is_directory=True)
        made.append(str(path))
    return made


def unlink(links: list[str]) -> None:
    for link in links:
        with contextlib.suppress(OSError):
            if os.path.islink(link):
                os.unlink(link)


def delete_directory(volume_id: str) -> bool:
    """Remove a directory volume's data (wherever it was created); False when there was none."""
    found = False
    for path in (volumes_root() / volume_id, shared_root() / volume_id):
        if path.exists():
            shutil.rmtree(path)
            found = True
    return found
