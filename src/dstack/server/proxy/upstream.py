"""Where a replica's app can be reached from the server: the one place that knows.

The local backend's replicas listen on this machine (127.0.0.1). A remote host is reached
through the agent's SSH tunnel: a backend that has one registers a resolver for its type with
`register()`, and the proxy and the prober call `upstream_for()` without knowing how.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from dstack.server.db import tables as t

Resolver = Callable[[t.Job, t.Instance, int], Awaitable[tuple[str, int] | None]]

_RESOLVERS: dict[str, Resolver] = {}


def register(backend: str, resolver: Resolver) -> None:
    """Plug in how a backend's hosts are reached (e.g. an SSH tunnel to `port` on the host)."""
    _RESOLVERS[backend] = resolver


def host_port(job: t.Job, service_port: int) -> int:
    """The port on the host: a published container port, else the app's own port."""
    data = json.loads(job.job_runtime_data or "{}")
    ports = data.get("ports") or {}
    mapped = ports.get(str(service_port)) or ports.get(service_port)
    return int(mapped) if mapped else service_port


async def _loopback(job: t.Job, inst: t.Instance, port: int) -> tuple[str, int] | None:
    return "127.0.0.1", port


register("local", _loopback)


async def upstream_for(
    job: t.Job, inst: t.Instance | None, service_port: int
) -> tuple[str, int] | None:
    """(host, port) to open a connection to, or None when the host cannot be reached yet."""
    if inst is None:
        return None
    resolver = _RESOLVERS.get(inst.backend)
    if resolver is None:
        return None
    return await resolver(job, inst, host_port(job, service_port))
