"""`CONNECT 127.0.0.1:PORT`: a raw byte stream to a port on this host's loopback, for a server
that reaches the agent but not the host's loopback (a Slurm compute node seen through its
login node: the job's SSH server and a service's app listen on the node's 127.0.0.1).

Only loopback targets are relayed, and only for a caller holding the agent's token (checked
before this runs): the agent runs the same user's jobs anyway, so this opens nothing new.
"""

from __future__ import annotations

import contextlib
import socket
import threading

CHUNK = 64 * 1024
LOOPBACK = ("127.0.0.1", "localhost")


class RelayError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def target_of(authority: str) -> int:
    """The port of a `127.0.0.1:PORT` authority (any other host is refused)."""
    host, _, port = authority.rpartition(":")
    if host not in LOOPBACK:
        raise RelayError(403, f"only 127.0.0.1 can be relayed to, not {host!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RelayError(400, f"bad port in {authority!r}")
    return int(port)


def open_target(port: int) -> socket.socket:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError as e:
        raise RelayError(502, f"cannot connect to 127.0.0.1:{port}: {e}") from e


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def relay(client: socket.socket, target: socket.socket) -> None:
    """Copy both ways until both sides are done (the handler's thread is one of the two)."""
    client.settimeout(None)
    target.settimeout(None)
    other = threading.Thread(target=_pump, args=(target, client), daemon=True)
    other.start()
    _pump(client, target)
    other.join()
    target.close()
