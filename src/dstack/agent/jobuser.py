"""Who a process-runtime job runs as (`user: name[:group]`, names or numeric ids).

A root agent runs the job as that user: its uid, primary gid (or the given group), supplementary
groups, HOME and SHELL. The job's code moves out of the agent's home (typically under /root,
which the user cannot enter) to a directory of its own under a root-owned base, owned by the
user; `code/` in the job's directory becomes a link to it. An agent that is not root can only
run jobs as itself: another user is refused, naming the host, rather than run as the agent.

A root agent given a default job user (DSTACK_AGENT_JOB_USER, set by the server for the local
backend's agent: the host that holds the server's database and keys) runs a process job that
names no `user` as that unprivileged account instead of root, creating it on first use
(`useradd --system --create-home`), so the job cannot read the server's files. `user: root`
opts back in to root.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from dstack.agent.util import CODE_DIR, read_json, write_json_atomic

USER_FILE = "user.json"
# Where a root agent puts the code of jobs that run as another user (root-owned, 0711: users
# reach their own job's directory by name, but cannot list or plant anything in the base).
USER_JOBS_BASE = os.environ.get("DSTACK_AGENT_USER_JOBS_DIR", "/var/tmp/dstack-user-jobs")
# The account a root agent runs process jobs without `user` as; unset or empty: the agent's own.
JOB_USER_ENV = "DSTACK_AGENT_JOB_USER"
_create_lock = threading.Lock()


class UserError(Exception):
    """The job cannot run as the user it names; the message says why and where."""


def _lookup_user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        return None


def _lookup_group(name: str) -> int | None:
    try:
        return grp.getgrgid(int(name)).gr_gid if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def resolve(user: str, host: str) -> dict[str, Any]:
    """`name[:group]` -> {name, uid, gid, groups, home, shell}; a numeric uid without a passwd
    entry is taken as is (as `docker --user` does), a name must exist."""
    name, _, group = user.partition(":")
    entry = _lookup_user(name)
    if entry is None and not name.isdigit():
        raise UserError(f"user {name} does not exist on {host}")
    if entry is None:
        ident = {"name": name, "uid": int(name), "gid": int(name), "home": "/", "shell": "/bin/sh"}
    else:
        ident = {"name": entry.pw_name, "uid": entry.pw_uid, "gid": entry.pw_gid,
                 "home": entry.pw_dir, "shell": entry.pw_shell or "/bin/sh"}  # fmt: skip
    if group:
        gid = _lookup_group(group)
        if gid is None and not group.isdigit():
            raise UserError(f"group {group} (of user {user}) does not exist on {host}")
        ident["gid"] = int(group) if gid is None else gid
    groups = [g.gr_gid for g in grp.getgrall() if ident["name"] in g.gr_mem]
    ident["groups"] = sorted({ident["gid"], *groups})
    return ident


def reachable(path: str | Path, ident: dict[str, Any]) -> bool:
    """Whether the user can pass through every folder above `path` (root's home usually
    stops everyone else)."""
    for folder in Path(path).parents:
        st = os.stat(folder)
        if st.st_uid == ident["uid"]:
            bit = stat.S_IXUSR
        elif st.st_gid in ident["groups"]:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _base() -> Path:
    base = Path(USER_JOBS_BASE)
    base.mkdir(mode=0o711, parents=True, exist_ok=True)
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise UserError(f"{base} must be a directory owned by root and writable only by root")
    return base


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _relocate(job_dir: Path, job_id: str, ident: dict[str, Any]) -> str:
    """Move the job's code to a directory the user owns; `code/` links to it."""
    code = job_dir / CODE_DIR
    target = _base() / job_id
    if code.is_symlink():
        return str(target)  # done by an earlier start of this job
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)  # an earlier start was cut short before the link was made
    target.mkdir(mode=0o700)
    for entry in list(code.iterdir()):
        shutil.move(str(entry), str(target / entry.name))
    _chown_tree(target, ident["uid"], ident["gid"])
    staged = job_dir / f"{CODE_DIR}-files"  # files.py: beside the code, wherever it goes
    if staged.is_dir():
        moved = target.with_name(f"{target.name}-files")
        shutil.rmtree(moved, ignore_errors=True)
        shutil.move(str(staged), str(moved))
        _chown_tree(moved, ident["uid"], ident["gid"])
    code.rmdir()
    code.symlink_to(target, target_is_directory=True)
    return str(target)


def default_user() -> str | None:
    """The default job user of a root agent (None: jobs without `user` run as the agent)."""
    if os.geteuid() != 0:
        return None
    return os.environ.get(JOB_USER_ENV, "").strip() or None


def job_user(spec: dict[str, Any]) -> str | None:
    """Whom a process job runs as when it is not the agent's own user: its `user`, else the
    default job user; None for the docker runtime or without either."""
    if spec.get("runtime") != "process":
        return None
    return spec.get("user") or default_user()


def ensure_account(name: str, host: str) -> None:
    """Create the default job user once (a system account with a home, no password). Another
    agent of this host may be creating it at the same moment (useradd then finds /etc/passwd
    locked): look again, a few times, before giving up."""
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    argv = ["useradd", "--system", "--create-home", "--shell", shell, name]
    error = ""
    with _create_lock:
        for attempt in range(3):
            if _lookup_user(name) is not None:
                return
            if attempt:
                time.sleep(1)
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.SubprocessError) as e:
                error = str(e)
                break  # no useradd: trying again changes nothing
            error = (done.stderr or done.stdout).strip()
        if _lookup_user(name) is None:
            raise UserError(
                f"cannot create the job user {name} on {host} ({error or 'useradd failed'}); "
                f"create it, or set `user` in the run (`user: root` runs the job as root)"
            )


def prepare(job_dir: Path, spec: dict[str, Any]) -> None:
    """Resolve a process-runtime job's user and make its code the user's; raises UserError.
    The identity goes to USER_FILE for the supervisor."""
    user = job_user(spec)
    if not user:
        return
    host = spec.get("host_label") or socket.gethostname()
    if not spec.get("user"):
        ensure_account(user, host)
    ident = resolve(user, host)
    me = os.geteuid()
    if me != 0:
        if ident["uid"] != me:
            agent = pwd.getpwuid(me).pw_name
            raise UserError(
                f"user {user}: the agent on {host} runs as {agent}, not root, so it can run "
                f"jobs only as {agent}"
            )
        return
    if ident["uid"] != 0:
        ident["dir"] = _relocate(job_dir, spec["id"], ident)
    write_json_atomic(job_dir / USER_FILE, ident)


def identity(job_dir: Path) -> dict[str, Any] | None:
    value = read_json(job_dir / USER_FILE)
    return value if isinstance(value, dict) else None


def user_env(ident: dict[str, Any]) -> dict[str, str]:
    return {"HOME": ident["home"], "USER": ident["name"], "LOGNAME": ident["name"],
            "SHELL": ident["shell"]}  # fmt: skip


def popen_kwargs(ident: dict[str, Any] | None) -> dict[str, Any]:
    if not ident:
        return {}
    return {"user": ident["uid"], "group": ident["gid"], "extra_groups": ident["groups"]}


def cleanup(job_dir: Path) -> None:
    """Remove the user's copy of the job's code and what lies beside it (with the job)."""
    ident = identity(job_dir)
    if ident and ident.get("dir") and Path(ident["dir"]).parent == Path(USER_JOBS_BASE):
        for suffix in ("", "-files", "-mpi"):
            shutil.rmtree(ident["dir"] + suffix, ignore_errors=True)
