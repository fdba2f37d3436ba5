"""`dstack ssh-proxy` (internal): the `ProxyCommand` of a run's `Host` block when SSH goes
through the server. It relays its stdin/stdout to the job's SSH server over the server's
WebSocket (`cli/ssh_relay.py`); `dstack attach` writes the line, users do not type it."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Internal: relay stdin/stdout to a running job's SSH server through the dstack server "
        "(the ProxyCommand that `dstack attach` writes when the job's host is not reachable)."
    )
    parser.add_argument("--url", required=True, help="the server URL")
    parser.add_argument("--project", required=True, help="the project")
    parser.add_argument("--replica", type=int, default=0, metavar="N", help="replica number")
    parser.add_argument("--job", type=int, default=0, metavar="N", help="job number")
    parser.add_argument("run_name", help="the run")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError
    from dstack.cli.ssh_relay import relay_url, run_proxy, token_for
    from dstack.client_config import ConfigError

    try:
        token = token_for(args.url, args.project)
    except ConfigError as e:  # said to the user through ssh: name who is speaking
        raise CLIError(f"dstack: {e}") from e
    url = relay_url(args.url, args.project, args.run_name, args.replica, args.job)
    return run_proxy(url, token)
