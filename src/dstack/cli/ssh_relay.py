"""SSH to a job through the server: the `ProxyCommand` side (`dstack ssh-proxy`) and the choice
of when to use it.

Why: `ssh <run>` normally goes straight to the job's host (this machine for the local backend,
a ProxyJump through an SSH-fleet host). That fails when this machine cannot reach the host: a
fleet behind a `proxy_jump` bastion the user has no login on (the server authorizes the user's
key on the job's host only, never on the bastion), a private address, or a local-backend server
on another machine. The server always reaches the host, so the `Host <run>` block then runs
`dstack ssh-proxy` as its ProxyCommand, which carries the SSH bytes over a WebSocket to the
server (`/api/project/{p}/runs/{run}/ssh`); the SSH session itself stays end to end.

The ProxyCommand line names the interpreter by absolute path (no `dstack` on PATH needed) and
carries the server URL and project, never the token: that is read from ~/.dstack/config.yml
when the command runs, as every other command reads it.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import socket
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

from dstack.cli.common import CLIError

ENV = "DSTACK_SSH_VIA_SERVER"  # 1: always through the server; 0: never; unset: decide
PROBE_TIMEOUT = 1.5
CHUNK = 64 * 1024


# --- when ------------------------------------------------------------------------------------


def forced_route(flag: bool = False) -> bool | None:
    """The user's override: `--ssh-via-server`, else DSTACK_SSH_VIA_SERVER (1/0); None: decide."""
    if flag:
        return True
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def is_local_url(server_url: str) -> bool:
    """Whether the server runs on this machine (its URL names a loopback address, or 0.0.0.0,
    which a client reaches as this machine)."""
    host = urlsplit(server_url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def tcp_reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def via_server(
    jpd: Any,
    server_url: str,
    forced: bool | None = None,
    probe: Callable[[str, int], bool] = tcp_reachable,
) -> bool:
    """Whether `ssh <run>` should go through the server rather than straight to the host.

    The override wins. A local-backend job is on the server's machine: direct only when the
    server is on this one. A host behind a proxy jump: through the server (the user's key opens
    the job's host, not the bastion). Any other host: direct when its SSH port answers a short
    TCP connect from here."""
    if forced is not None:
        return forced
    if jpd.backend == "local":
        return not is_local_url(server_url)
    if jpd.ssh_proxy:
        return True
    host = jpd.hostname or jpd.internal_ip
    if not host:
        return True
    return not probe(host, int(jpd.ssh_port or 22))


# --- the ProxyCommand line -------------------------------------------------------------------


def proxy_command(
    server_url: str,
    project: str,
    run_name: str,
    replica: int = 0,
    job: int = 0,
    python: str | None = None,
) -> str:
    """`<python> -m dstack.cli.main ssh-proxy ...`, shell-quoted (ssh runs it with the user's
    shell) and with `%` doubled (ssh expands `%` tokens in ProxyCommand)."""
    argv = [
        os.path.abspath(python or sys.executable), "-m", "dstack.cli.main", "ssh-proxy",
        "--url", server_url, "--project", project,
        "--replica", str(replica), "--job", str(job), run_name,
    ]  # fmt: skip
    return " ".join(shlex.quote(a) for a in argv).replace("%", "%%")


def relay_url(server_url: str, project: str, run_name: str, replica: int, job: int) -> str:
    base = server_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    path = f"/api/project/{quote(project, safe='')}/runs/{quote(run_name, safe='')}/ssh"
    return f"{base}{path}?replica_num={replica}&job_num={job}"


def token_for(server_url: str, project: str) -> str:
    """The token of PROJECT from ~/.dstack/config.yml (or DSTACK_TOKEN), for this server only."""
    from dstack.client_config import get_project_config

    cfg = get_project_config(project)
    if cfg.url.rstrip("/") != server_url.rstrip("/"):
        raise CLIError(
            f"project {project} in ~/.dstack/config.yml is on {cfg.url}, not {server_url}; "
            "attach to the run again to update its SSH entry"
        )
    return cfg.token


# --- the relay -------------------------------------------------------------------------------


def run_proxy(url: str, token: str) -> int:
    """Relay stdin/stdout to the server's WebSocket until either side ends."""
    import threading

    from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    try:
        ws = connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            compression=None,  # SSH traffic is encrypted: nothing to gain
            open_timeout=15,
            max_size=None,
        )
    except InvalidStatus as e:
        raise CLIError(f"dstack: {refusal_text(e.response.status_code, e.response.body)}") from e
    except (OSError, TimeoutError, WebSocketException) as e:
        raise CLIError(f"dstack: cannot reach the dstack server at {url}: {e}") from e
    with ws:
        threading.Thread(target=_stdin_to_ws, args=(ws,), daemon=True).start()
        try:
            for message in ws:
                _write_all(sys.stdout.fileno(), message if isinstance(message, bytes) else b"")
        except ConnectionClosed:
            pass
        except OSError:  # ssh went away
            return 0
    code, reason = getattr(ws, "close_code", None), getattr(ws, "close_reason", None)
    if code is not None and code >= 4000 and reason:
        raise CLIError(f"dstack: {reason}")
    return 0


def _stdin_to_ws(ws: Any) -> None:
    """Stdin to the server; at its end an empty message, the relay's half-close (the server
    shuts the job side's write half), so what the job still sends keeps arriving."""
    from websockets.exceptions import ConnectionClosed

    fd = sys.stdin.fileno()
    try:
        while data := os.read(fd, CHUNK):
            ws.send(data)
        ws.send(b"")
    except ConnectionClosed:
        pass
    except OSError:
        ws.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def refusal_text(status: int, body: bytes | None) -> str:
    """The server's reason (`detail[0].msg`), else the bare status."""
    import json

    try:
        return str(json.loads(body or b"")["detail"][0]["msg"])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"the server refused the SSH relay (HTTP {status})"
