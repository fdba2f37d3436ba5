"""Command line entry of the agent: `python3 -m dstack.agent --home DIR ...`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO

from dstack.agent import __version__
from dstack.agent.server import AgentHTTPServer, token_hash
from dstack.agent.util import iso_from_ts, write_json_atomic, write_text_atomic

log = logging.getLogger("dstack.agent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dstack-agent", description="dstack host agent")
    parser.add_argument("--home", required=True, help="state directory of the agent")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument(
        "--listen",
        metavar="ADDR",
        help="address to bind instead of --host, loopback or not: for a host the server "
        "reaches through a jump host (a Slurm compute node behind its login node); every "
        "request but the health check still needs the token",
    )
    parser.add_argument("--port", type=int, default=0, help="port (0 = pick a free one)")
    parser.add_argument(
        "--token-file", help="file holding the bearer token (else env DSTACK_AGENT_TOKEN)"
    )
    parser.add_argument(
        "--token-sha256-file",
        help="file holding only the token's SHA-256 (hex): enough to check requests, so a "
        "supervisor that restarts the agent never needs the token itself on disk",
    )
    parser.add_argument("--version", action="version", version=__version__)
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def read_token(token_file: str | None) -> str:
    token = os.environ.pop("DSTACK_AGENT_TOKEN", "")  # never passed on to jobs
    if token_file:
        token = Path(token_file).read_text().strip()
    return token.strip()


def resolve_digest(args: argparse.Namespace) -> str | None:
    """The SHA-256 the agent checks bearer tokens against, from the token or its hash file."""
    token = read_token(args.token_file)  # always: the env variable must not reach jobs
    if args.token_sha256_file:
        digest = Path(args.token_sha256_file).read_text().strip().lower()
        if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            return digest
        return None
    return token_hash(token) if token else None


def lock_home(home: Path) -> IO[str] | None:
    """Hold an exclusive lock for our lifetime: two agents on one home would fight."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, best effort
        return None
    handle = open(home / "agent.lock", "w")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SystemExit(f"another agent is already running with home {home}") from None
    return handle


def setup_logging(home: Path) -> None:
    handler = logging.FileHandler(home / "agent.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dstack.agent")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if os.environ.get("DSTACK_AGENT_DEBUG") else logging.INFO)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.listen:
        args.host = args.listen
    elif not is_loopback(args.host):
        print(f"error: refusing to bind non-loopback address {args.host!r}", file=sys.stderr)
        return 2
    try:
        digest = resolve_digest(args)
    except OSError as e:
        print(f"error: cannot read the token file: {e}", file=sys.stderr)
        return 2
    if not digest:
        print(
            "error: no token: pass --token-file, --token-sha256-file (64 hex digits) "
            "or set DSTACK_AGENT_TOKEN",
            file=sys.stderr,
        )
        return 2
    home = Path(args.home).absolute()
    home.mkdir(parents=True, exist_ok=True)
    lock = lock_home(home)
    setup_logging(home)
    write_text_atomic(home / "token.sha256", digest + "\n", mode=0o600)
    server = AgentHTTPServer((args.host, args.port), home, digest)
    port = server.server_address[1]
    write_json_atomic(
        home / "agent.json",
        {
            "pid": os.getpid(),
            "port": port,
            "version": __version__,
            "started_at": iso_from_ts(time.time()),
        },
    )
    log.info("agent %s listening on %s:%s, home %s", __version__, args.host, port, home)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        log.info("agent stopping; running jobs keep running under their supervisors")
    finally:
        server.server_close()
        if lock is not None:
            lock.close()
    return 0
