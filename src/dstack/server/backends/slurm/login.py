"""The server's SSH connections to the clusters' login nodes: commands, and tunnels to compute
nodes as the login node reaches them (`direct-tcpip` to `(node, port)`).

Host keys: the configured `host_key` is pinned; without one the key the login node presents
first is trusted and kept for the server process (a different key later fails the call).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from dstack.models.backends import SlurmBackendConfig, SlurmCluster
from dstack.server.backends.base import BackendError
from dstack.server.backends.ssh.connection import HostParams, SSHPool


class Runner(Protocol):
    """Runs a shell command on a cluster's login node: (exit status, stdout, stderr)."""

    async def __call__(
        self, cluster: str, command: str, stdin: bytes | str | None = None
    ) -> tuple[int, str, str]: ...


def read_keys(config: SlurmBackendConfig) -> dict[str, str]:
    """Each cluster's private key, read now (at start) from `path` or taken from `content`:
    a file that cannot be read is this backend's start error, naming the cluster and path."""
    keys = {}
    for c in config.clusters:
        if c.private_key.content is not None:
            keys[c.name] = c.private_key.content
            continue
        path = Path(c.private_key.path or "").expanduser()
        try:
            keys[c.name] = path.read_text()
        except OSError as e:
            raise BackendError(
                f"cluster {c.name}: cannot read private_key.path {path}: {e.strerror or e}"
            ) from e
    return keys


class LoginNodes:
    def __init__(self, config: SlurmBackendConfig, keys: dict[str, str]) -> None:
        self.clusters: dict[str, SlurmCluster] = {c.name: c for c in config.clusters}
        self.pool = SSHPool()
        self._params = {
            c.name: HostParams(c.hostname, c.port, c.user, (keys[c.name],)) for c in config.clusters
        }
        self._host_keys: dict[str, str] = {
            c.name: c.host_key for c in config.clusters if c.host_key
        }

    def params(self, cluster: str) -> HostParams:
        try:
            return self._params[cluster]
        except KeyError:
            raise BackendError(f"cluster {cluster} is not in the backend's configuration") from None

    async def _connect(self, cluster: str) -> Any:
        conn, key = await self.pool.connect(self.params(cluster), self._host_keys.get(cluster))
        self._host_keys.setdefault(cluster, key)
        return conn

    async def run(
        self, cluster: str, command: str, stdin: bytes | str | None = None
    ) -> tuple[int, str, str]:
        await self._connect(cluster)
        if isinstance(stdin, str):  # the pool's sessions are binary
            stdin = stdin.encode()
        return await self.pool.run(
            self.params(cluster), self._host_keys.get(cluster), command, stdin
        )

    async def forward(self, cluster: str, node: str, port: int) -> int:
        """A local port reaching `node:port` through the login node."""
        await self._connect(cluster)
        return await self.pool.forward(
            self.params(cluster), self._host_keys.get(cluster), port, dest=node
        )

    async def open_stream(self, cluster: str, node: str, port: int) -> Any:
        await self._connect(cluster)
        return await self.pool.open_stream(
            self.params(cluster), self._host_keys.get(cluster), port, dest=node
        )

    async def close(self) -> None:
        await self.pool.close()
