"""The port a job's app must listen on (a service replica on the process runtime).

Replicas that share a host cannot share a port. An app that finds its port taken exits with a
bind error the server can only see as "exited (1)", and a retried replica hits the same wall.
So the agent tests the port right before it starts the job, where it knows the host: a job
may ask for one exact port (`listen_port_search` 1: replica 0 keeps the configured port, which
apps often hard-code) or for the first free one of a window above it (replica N > 0). The
choice is written to the job directory, so other jobs of this host starting before the app
binds do not pick the same port, and the job state reports it (`listen_port`).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dstack.agent.util import RESULT_FILE, SUPERVISOR_FILE, read_json, write_json_atomic

LISTEN_FILE = "listen.json"
SERVICE_PORT_ENV = "DSTACK_SERVICE_PORT"
MAX_SEARCH = 1000
# Addresses an app may bind: every IPv4 address, and every IPv6 one (v6-only, so that a
# host without IPv6 or with a v4 listener only answers for the family it has).
_PROBES = ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::"))


def _bind_fails(family: int, address: str, port: int) -> bool:
    """Whether a listening socket on (address, port) is refused because the port is taken.

    SO_REUSEADDR as servers set it: a port left in TIME_WAIT by a previous replica is free
    for them, so it is free here too."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return False  # the family is not supported here: nothing can listen on it
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(1)
    except OSError as e:
        # Anything else (no IPv6 address, a privileged port) is not a collision: the app
        # meets it with its own error.
        return e.errno == errno.EADDRINUSE
    finally:
        sock.close()
    return False


def port_in_use(port: int) -> bool:
    """True when something on this host already listens on (or holds) `port`."""
    return any(_bind_fails(family, address, port) for family, address in _PROBES)


def reserved_ports(root: Path, own: Path) -> set[int]:
    """Ports chosen by this host's other jobs that have started and not finished: their app
    may not have bound its port yet, so a bind test alone would not see them."""
    out: set[int] = set()
    for other in root.iterdir():
        if other == own or other.name.startswith(".") or (other / RESULT_FILE).exists():
            continue
        if not (other / SUPERVISOR_FILE).exists():
            continue
        info = read_json(other / LISTEN_FILE)
        if isinstance(info, dict) and isinstance(info.get("port"), int):
            out.add(info["port"])
    return out


def choose_port(
    base: int,
    search: int,
    reserved: set[int],
    in_use: Callable[[int], bool] = port_in_use,
) -> int | None:
    """The first port from `base` upward (at most `search` of them, below 65536) that no
    other job reserved and nothing holds; None when every one is taken."""
    for port in range(base, min(base + max(search, 1), 65536)):
        if port not in reserved and not in_use(port):
            return port
    return None


def busy_message(base: int, search: int, host: str) -> str:
    """Why the job could not start, naming the port(s) and the host."""
    if search <= 1:
        return (
            f"port {base} is already in use on host {host}; stop whatever listens there "
            "or change the service's `port`"
        )
    last = min(base + search, 65536) - 1
    return f"ports {base}-{last} are all in use on host {host}"


def assign(root: Path, path: Path, spec: dict[str, Any], host: str) -> str | None:
    """Pick and record the job's listen port; returns an error message when none is free."""
    base = spec.get("listen_port")
    if not base:
        return None
    search = int(spec.get("listen_port_search") or 1)
    port = choose_port(int(base), search, reserved_ports(root, path))
    if port is None:
        return busy_message(int(base), search, host)
    write_json_atomic(path / LISTEN_FILE, {"port": port})
    return None
