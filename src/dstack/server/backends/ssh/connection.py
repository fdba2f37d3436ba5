"""One multiplexed SSH connection per host (asyncssh), kept alive and re-established after a
drop; agent traffic rides on local port forwards over it.

Host keys are trusted on first use: the caller passes the key recorded at the first connection
(or None the first time) and gets back the key the host presented, to record. A different key
fails with `HostKeyChanged`, never silently reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dstack.server.backends.base import BackendError

# asyncssh (~0.1 s to import) is imported by the functions that talk SSH: every server start
# builds the SSH backend, and most starts open no SSH connection before their first answer.
if TYPE_CHECKING:
    import asyncssh

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
KEEPALIVE_INTERVAL = 2.0
KEEPALIVE_COUNT_MAX = 3


class SSHError(BackendError):
    """Reaching the host over SSH failed; the message says why, in the user's terms."""


class HostUnreachable(SSHError):
    pass


class AuthFailed(SSHError):
    pass


class HostKeyChanged(SSHError):
    pass


@dataclass(frozen=True)
class HostParams:
    hostname: str
    port: int
    user: str
    private_keys: tuple[str, ...]  # OpenSSH private keys to try, in order
    proxy: HostParams | None = None

    @property
    def address(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def key(self) -> str:
        via = f" via {self.proxy.key}" if self.proxy else ""
        return self.address + via


def same_key(a: str, b: str) -> bool:
    """Two OpenSSH public key lines name the same key whatever their comments say."""
    return a.split()[:2] == b.split()[:2]


def fingerprint(public_key: str) -> str:
    import asyncssh

    try:
        return asyncssh.import_public_key(public_key).get_fingerprint()
    except (asyncssh.KeyImportError, ValueError):
        return "?"


def _keys(params: HostParams) -> list[asyncssh.SSHKey]:
    import asyncssh

    keys = []
    for text in params.private_keys:
        try:
            keys.append(asyncssh.import_private_key(text))
        except (asyncssh.KeyImportError, ValueError) as e:
            raise AuthFailed(f"cannot use the SSH key for {params.address}: {e}") from e
    return keys


async def open_connection(
    params: HostParams, known_key: str | None, on_lost: Any = None
) -> tuple[asyncssh.SSHClientConnection, str]:
    """Connect (through the proxy jump if any); returns the connection and the host key.

    The jump connection belongs to this one: closed when it fails to open or closes."""
    tunnel = None
    if params.proxy is not None:
        tunnel, _ = await open_connection(params.proxy, None)
    try:
        return await _open(params, known_key, on_lost, tunnel)
    except BaseException:
        if tunnel is not None:
            tunnel.close()
        raise


async def _open(
    params: HostParams,
    known_key: str | None,
    on_lost: Any,
    tunnel: asyncssh.SSHClientConnection | None,
) -> tuple[asyncssh.SSHClientConnection, str]:
    import asyncssh

    known_hosts: Any = None
    if known_key:
        known_hosts = ([asyncssh.import_public_key(known_key)], [], [])

    class _Client(asyncssh.SSHClient):
        def connection_lost(self, exc: Exception | None) -> None:
            if tunnel is not None:
                tunnel.close()
            if on_lost is not None:
                on_lost()

    try:
        conn = await asyncssh.connect(
            params.hostname,
            port=params.port,
            username=params.user,
            client_keys=_keys(params),
            known_hosts=known_hosts,
            tunnel=tunnel,
            connect_timeout=CONNECT_TIMEOUT,
            keepalive_interval=KEEPALIVE_INTERVAL,
            keepalive_count_max=KEEPALIVE_COUNT_MAX,
            agent_path=None,
            config=[],
            client_factory=_Client,
        )
    except asyncssh.HostKeyNotVerifiable as e:
        raise HostKeyChanged(
            f"the host key of {params.hostname}:{params.port} changed: it is not the key "
            f"recorded at the first connection ({fingerprint(known_key or '')}). If the host was "
            "reinstalled, delete the fleet and apply it again; otherwise someone may be "
            "impersonating the host"
        ) from e
    except asyncssh.PermissionDenied as e:
        raise AuthFailed(
            f"SSH authentication failed for {params.address}: the host refused the key "
            "(check identity_file and the user's ~/.ssh/authorized_keys on the host)"
        ) from e
    except (OSError, asyncio.TimeoutError, asyncssh.Error) as e:
        what = "timed out" if isinstance(e, asyncio.TimeoutError) else str(e) or type(e).__name__
        raise HostUnreachable(
            f"cannot reach {params.hostname}:{params.port} over SSH: {what}"
        ) from e
    host_key = conn.get_server_host_key()
    return conn, host_key.export_public_key().decode().strip() if host_key else ""


class _Entry:
    def __init__(self) -> None:
        self.conn: asyncssh.SSHClientConnection | None = None
        self.host_key = ""
        self.closed = True
        # (destination host as the SSH server resolves it, port) -> local port
        self.forwards: dict[tuple[str, int], int] = {}
        self.lock = asyncio.Lock()

    def lost(self) -> None:
        self.closed = True
        self.forwards.clear()


class SSHPool:
    """Connections by host, each reused by every caller until it drops."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    async def connect(
        self, params: HostParams, known_key: str | None
    ) -> tuple[asyncssh.SSHClientConnection, str]:
        entry = self._entries.setdefault(params.key, _Entry())
        async with entry.lock:
            if entry.conn is not None and not entry.closed:
                if known_key and entry.host_key and not same_key(known_key, entry.host_key):
                    raise HostKeyChanged(f"the host key of {params.hostname} changed")
                return entry.conn, entry.host_key
            conn, host_key = await open_connection(params, known_key, on_lost=entry.lost)
            entry.conn, entry.host_key, entry.closed = conn, host_key, False
            entry.forwards.clear()
            return conn, host_key

    async def forward(
        self, params: HostParams, known_key: str | None, remote_port: int, dest: str = "127.0.0.1"
    ) -> int:
        """A local port that reaches `remote_port` on the host's loopback, or on `dest` as the
        host reaches it (a Slurm compute node seen from the login node)."""
        import asyncssh

        conn, _ = await self.connect(params, known_key)
        entry = self._entries[params.key]
        async with entry.lock:
            local = entry.forwards.get((dest, remote_port))
            if local is None:
                try:
                    listener = await conn.forward_local_port("127.0.0.1", 0, dest, remote_port)
                except (OSError, asyncssh.Error) as e:
                    raise HostUnreachable(
                        f"port forwarding to {dest}:{remote_port} via {params.hostname} failed: {e}"
                    ) from e
                local = listener.get_port()
                entry.forwards[(dest, remote_port)] = local
            return local

    async def open_stream(
        self, params: HostParams, known_key: str | None, port: int, dest: str = "127.0.0.1"
    ) -> tuple[asyncssh.SSHReader, asyncssh.SSHWriter]:
        """A direct-tcpip channel to `port` on the host's loopback (or on `dest` as the host
        reaches it) over the pooled connection (so through the proxy jump too): one channel
        per stream, closed with its writer."""
        import asyncssh

        conn, _ = await self.connect(params, known_key)
        try:
            return await conn.open_connection(dest, port)
        except (OSError, asyncssh.Error) as e:
            where = params.hostname if dest == "127.0.0.1" else f"{dest} via {params.hostname}"
            raise HostUnreachable(f"cannot open a connection to port {port} on {where}: {e}") from e

    async def run(
        self,
        params: HostParams,
        known_key: str | None,
        command: str,
        stdin: bytes | str | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, str, str]:
        import asyncssh

        conn, _ = await self.connect(params, known_key)
        try:
            result = await asyncio.wait_for(
                conn.run(command, input=stdin, check=False, encoding=None), timeout
            )
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as e:
            raise HostUnreachable(f"command on {params.hostname} failed: {e!r}") from e
        out = (result.stdout or b"").decode(errors="replace")
        err = (result.stderr or b"").decode(errors="replace")
        rc = result.exit_status if result.exit_status is not None else -1
        return int(rc), out, err

    async def drop(self, params: HostParams) -> None:
        entry = self._entries.pop(params.key, None)
        if entry is not None and entry.conn is not None:
            entry.conn.close()
            entry.lost()

    async def close(self) -> None:
        for entry in self._entries.values():
            if entry.conn is not None:
                entry.conn.close()
        self._entries.clear()
