"""One session of the local backend's SSH server (local_sshd.py): a shell or a command, with
pipes or a PTY, in the job's working directory with its environment.

A process job's session is started from what the server read before it became the job's user
(the job's environment, its working dir): the agent's files are not the job user's to read. A
docker job's goes through the agent's login script (`docker exec`), as OpenSSH's ForceCommand.

Every session is its own process group, hung up when the client goes away, so nothing a session
started outlives its connection by accident; the job's end kills the whole server tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import termios
from dataclasses import dataclass
from typing import Any

import asyncssh

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHUNK = 65536
DRAIN_AFTER_EXIT = 1.0  # a PTY still held by a background process: stop reading after this
PTY_QUIET = 0.1  # a PTY whose shell exited is drained until its output pauses this long


@dataclass(frozen=True)
class Launch:
    """How sessions start: ENV set (a process job) runs the job's shell directly in WORKDIR;
    else LOGIN, the agent's login script, is run with SSH_ORIGINAL_COMMAND."""

    login: str
    env: dict[str, str] | None = None
    workdir: str | None = None

    def argv(self, command: str | None) -> list[str]:
        if self.env is None:
            return ["/bin/sh", self.login]
        shell = self.env.get("SHELL") or "/bin/sh"
        return [shell] if command is None else [shell, "-c", command]

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        return {**base, **(self.env or {})}

    def cwd(self) -> str | None:
        if self.env is None or not self.workdir or not os.path.isdir(self.workdir):
            return None
        return self.workdir


def set_directory(path: str | None) -> None:
    """The job's working dir, where sftp's relative paths start (if it exists yet)."""
    if path:
        with contextlib.suppress(OSError):
            os.chdir(path)


def session_env(process: asyncssh.SSHServerProcess) -> dict[str, str]:
    """A clean environment, as sshd gives: the login script adds the job's own on top."""
    env = {k: os.environ[k] for k in ("HOME", "USER", "LOGNAME", "SHELL") if k in os.environ}
    env["PATH"] = BASE_PATH
    env.setdefault("LOGNAME", env.get("USER", ""))
    for key, value in (process.env or {}).items():
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key == "LANG" or key.startswith("LC_"):
            env[key] = value.decode() if isinstance(value, bytes) else str(value)
    peer = process.get_extra_info("peername") or ("", 0)
    local = process.get_extra_info("sockname") or ("", 0)
    env["SSH_CLIENT"] = f"{peer[0]} {peer[1]} {local[1]}"
    env["SSH_CONNECTION"] = f"{peer[0]} {peer[1]} {local[0]} {local[1]}"
    if process.command is not None:
        env["SSH_ORIGINAL_COMMAND"] = process.command
    term = process.get_terminal_type()
    if term:
        env["TERM"] = term
    return env


def _set_size(fd: int, size: tuple[int, ...]) -> None:
    width, height, pixwidth, pixheight = (list(size) + [0, 0, 0, 0])[:4]
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixwidth, pixheight))


def _hangup(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGHUP)


def _take_controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # after setsid (start_new_session): the PTY is ours


async def _pump_in(process: asyncssh.SSHServerProcess, write: Any, close: Any, pid: int,
                   tty: int | None) -> None:  # fmt: skip
    """Client -> session: data, EOF, window size changes, signals."""
    while True:
        try:
            data = await process.stdin.read(CHUNK)
        except asyncssh.TerminalSizeChanged as e:
            if tty is not None:
                _set_size(tty, (e.width, e.height, e.pixwidth, e.pixheight))
            continue
        except asyncssh.SignalReceived as e:
            sig = getattr(signal, f"SIG{e.signal}", None)
            if sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
            continue
        except asyncssh.BreakReceived:
            continue
        except (asyncssh.Error, OSError):
            break
        if not data:
            break
        try:
            await write(data)
        except (OSError, RuntimeError):
            break
    close()


async def _pump_out(read: Any, out: asyncssh.SSHWriter, seen: list[float] | None = None) -> None:
    """Session -> client until EOF (a PTY's EIO once its last holder closed it is EOF too).
    SEEN[0] is when data last came (a PTY's end is a pause, not an EOF: see _run_pty)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = await read(CHUNK)
        except OSError:
            return
        if not data:
            return
        if seen is not None:
            seen[0] = loop.time()
        out.write(data)
        await out.drain()


async def _quiet(seen: list[float], limit: float) -> None:
    """Until the PTY's output has paused for PTY_QUIET (or LIMIT passed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline and loop.time() - seen[0] < PTY_QUIET:
        await asyncio.sleep(PTY_QUIET / 3)


async def _finish(process: asyncssh.SSHServerProcess, proc: asyncio.subprocess.Process,
                  outputs: list[asyncio.Task[None]], seen: list[float] | None) -> None:  # fmt: skip
    """Wait for the session (or the client's departure), then report its exit status."""
    closed = asyncio.ensure_future(process.channel.wait_closed())
    exited = asyncio.ensure_future(proc.wait())
    await asyncio.wait({closed, exited}, return_when=asyncio.FIRST_COMPLETED)
    if not exited.done():  # the client left: hang up on the session, as sshd does
        _hangup(proc.pid)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), 5)
        if not exited.done():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for task in outputs:
            task.cancel()
        return
    # Output written just before the exit still comes through; a PTY a background process
    # keeps open does not hold the session forever (sshd closes it too).
    if seen is None:
        await asyncio.wait(outputs)
    else:
        await _quiet(seen, DRAIN_AFTER_EXIT)
    for task in outputs:
        task.cancel()
    code = proc.returncode if proc.returncode is not None else 255
    with contextlib.suppress(OSError, asyncssh.Error):
        if code < 0:
            name = signal.Signals(-code).name[3:]
            process.exit_with_signal(name)
        else:
            process.exit(code)
    closed.cancel()


async def run_session(process: asyncssh.SSHServerProcess, launch: Launch) -> None:
    if process.subsystem is not None:  # only sftp is served, by asyncssh itself
        process.stderr.write(f"subsystem {process.subsystem} is not supported\n".encode())
        process.exit(1)
        return
    argv = launch.argv(process.command)
    env = launch.environment(session_env(process))
    if process.get_terminal_type():
        await _run_pty(process, argv, env, launch.cwd())
    else:
        await _run_pipes(process, argv, env, launch.cwd())


async def _run_pipes(
    process: asyncssh.SSHServerProcess, argv: list[str], env: dict[str, str], cwd: str | None
) -> None:
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=pipe, stdout=pipe, stderr=pipe, env=env, cwd=cwd, start_new_session=True
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin = proc.stdin

    async def write(data: bytes) -> None:
        stdin.write(data)
        await stdin.drain()

    feeder = asyncio.ensure_future(_pump_in(process, write, stdin.close, proc.pid, None))
    outputs = [
        asyncio.ensure_future(_pump_out(proc.stdout.read, process.stdout)),
        asyncio.ensure_future(_pump_out(proc.stderr.read, process.stderr)),
    ]
    try:
        await _finish(process, proc, outputs, None)
    finally:
        feeder.cancel()


async def _run_pty(
    process: asyncssh.SSHServerProcess, argv: list[str], env: dict[str, str], cwd: str | None
) -> None:
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    _set_size(master, process.get_terminal_size())
    # This end of the PTY stays open until the session ends: Linux may answer EIO to a read
    # before it passed on what the shell wrote just before exiting, once no one holds it.
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
            start_new_session=True, preexec_fn=_take_controlling_tty,
        )  # fmt: skip
    except BaseException:
        os.close(slave)
        raise
    reader = asyncio.StreamReader()
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(master, "rb", 0)
    )
    write_transport, _ = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(os.dup(master), "wb", 0)
    )

    async def write(data: bytes) -> None:
        write_transport.write(data)

    feeder = asyncio.ensure_future(_pump_in(process, write, lambda: None, proc.pid, master))
    seen = [loop.time()]
    outputs = [asyncio.ensure_future(_pump_out(reader.read, process.stdout, seen))]
    try:
        await _finish(process, proc, outputs, seen)
    finally:
        feeder.cancel()
        read_transport.close()
        write_transport.close()
        os.close(slave)
