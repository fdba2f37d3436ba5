"""The local backend's own SSH server for one job, for a machine without OpenSSH's sshd.

A fresh machine often has the OpenSSH client but not `openssh-server`; the agent is stdlib-only,
so the server package (which has asyncssh) provides this instead, and the agent starts it in
sshd's place (agent/sshd.py, BUILTIN_SSHD_ENV): `python -m dstack.server.backends.local_sshd
JOB_SSH_DIR`. It reads the files the agent wrote for sshd (authorized_keys, host_key,
login.sh) and server.json (port, user name, the job's user, environment and working dir), and
keeps the same promises: 127.0.0.1 only, exactly the run's keys, sessions in the job's working
directory with its environment, dies with the job.

Credentials: when the job runs as another user (agent/jobuser.py), this process becomes that
user right after binding its port and reading its keys, so every session, the SFTP server and
every port forward act with the job's rights, never the agent's. Everything it will ever import
is imported before that (the interpreter may live where the job's user cannot read).

Supported: exec and shell, with or without a PTY (window changes, signals); sftp (what modern
`scp` uses) and legacy `scp -O`, both in-process; rsync (exec of the host's rsync); local and
dynamic forwards (`ssh -L`, `ssh -D`, direct-tcpip and Unix sockets); remote forwards
(`ssh -R`) on loopback only. Not supported: agent and X11 forwarding. Docker jobs get exec and
shell (`docker exec` by login.sh) but no sftp: the container's files are not this process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import asyncssh

from dstack.server.backends.local_sshd_session import Launch, run_session, set_directory

LOOPBACK = ("localhost", "127.0.0.1", "::1")
SERVER_FILE = "server.json"  # agent/sshd.py SERVER_FILE


def load_keys(path: Path) -> set[bytes]:
    """The public keys (their wire form) of an authorized_keys file; bad lines are skipped."""
    keys: set[bytes] = set()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return keys
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        with contextlib.suppress(asyncssh.KeyImportError, ValueError):
            keys.add(asyncssh.import_public_key(line).public_data)
    return keys


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The job's host key, made on first start (no ssh-keygen needed)."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519", comment="dstack-job")
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    return key


class JobSSHServer(asyncssh.SSHServer):
    """Public keys only, the one user name the job's SSH entry names, loopback listeners."""

    def __init__(self, user: str, keys: set[bytes]) -> None:
        self.user, self.keys = user, keys

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self.user and key.public_data in self.keys

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:  # fmt: skip
        return True  # as the job itself could: this process has the job's rights

    def unix_connection_requested(self, dest_path: str) -> bool:
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        # OpenSSH's GatewayPorts=no: remote forwards listen on this machine's loopback only.
        return listen_host in LOOPBACK


class JobSFTPServer(asyncssh.SFTPServer):
    def exit(self) -> None:
        # As sftp-server does: exit status 0 at the end (scp reports a session without one
        # as failed even though every file arrived).
        with contextlib.suppress(OSError, asyncssh.Error):
            self.channel.exit(0)


def become(ident: dict[str, Any] | None) -> None:
    """Drop to the job's user (only a root agent starts a job as another user)."""
    if not ident or os.getuid() != 0:
        return
    os.setgroups([int(g) for g in ident.get("groups") or [ident["gid"]]])
    os.setgid(int(ident["gid"]))
    os.setuid(int(ident["uid"]))
    os.environ.update(HOME=str(ident.get("home") or "/"), USER=str(ident.get("name") or ""))


def _preload() -> None:
    """Modules imported lazily by a session or a forward: loaded now, while readable."""
    import encodings.idna  # noqa: F401 - getaddrinfo of a forward's host name
    import fcntl  # noqa: F401
    import pty  # noqa: F401
    import termios  # noqa: F401

    import asyncssh.scp  # noqa: F401
    import asyncssh.sftp  # noqa: F401


async def serve(ssh_dir: Path) -> None:
    conf = json.loads((ssh_dir / SERVER_FILE).read_text())
    keys = load_keys(ssh_dir / "authorized_keys")
    host_key = load_host_key(ssh_dir / "host_key")
    workdir = conf.get("working_dir")
    env = conf.get("env")  # a process job's; a docker job's sessions use the login script
    files = isinstance(env, dict)
    launch = Launch(str(ssh_dir / "login.sh"), env if files else None, workdir)

    async def session(process: asyncssh.SSHServerProcess) -> None:
        await run_session(process, launch)

    def sftp(chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        set_directory(workdir)
        return JobSFTPServer(chan)

    _preload()
    server = await asyncssh.listen(
        "127.0.0.1",
        int(conf["port"]),
        server_factory=lambda: JobSSHServer(str(conf["user"]), keys),
        server_host_keys=[host_key],
        process_factory=session,
        sftp_factory=sftp if files else None,
        allow_scp=files,
        encoding=None,
        line_editor=False,
        agent_forwarding=False,
        x11_forwarding=False,
        keepalive_interval=30,
        reuse_address=True,
    )
    become(conf.get("ident"))
    set_directory(workdir)
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dstack.server.backends.local_sshd JOB_SSH_DIR", file=sys.stderr)
        return 2
    ssh_dir = Path(args[0])
    try:
        asyncio.run(serve(ssh_dir))
    except Exception as e:
        # Where the agent looks for why the job's SSH server exited (sshd's -E log).
        with contextlib.suppress(OSError):
            (ssh_dir / "sshd.log").write_text(f"{type(e).__name__}: {e}\n")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
