"""Where a replica's app can be reached from the server: the one place the proxy asks.

How a host is reached (this machine's loopback, a forward over a host's SSH connection) is the
backend's business: the server installs one resolver at start (`install()`), built on the
compute interface, and the proxy and the prober call `upstream_for()` without knowing how.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from dstack.server.db import tables as t

Resolver = Callable[[t.Instance, int], Awaitable[tuple[str, int] | None]]

_resolver: Resolver | None = None


def install(resolver: Resolver | None) -> None:
    """Plug in how hosts are reached: (instance row, port on the host) -> (address, port)."""
    global _resolver
    _resolver = resolver


def host_port(job: t.Job, service_port: int) -> int:
    """The port on the host: a published container port, else the app's own port."""
    data = json.loads(job.job_runtime_data or "{}")
    ports = data.get("ports") or {}
    mapped = ports.get(str(service_port)) or ports.get(service_port)
    return int(mapped) if mapped else service_port


async def upstream_for(
    job: t.Job, inst: t.Instance | None, service_port: int
) -> tuple[str, int] | None:
    """(host, port) to open a connection to, or None when the host cannot be reached yet."""
    if inst is None or _resolver is None:
        return None
    return await _resolver(inst, host_port(job, service_port))
