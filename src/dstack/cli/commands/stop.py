"""`dstack stop`: stop (or abort) a run."""

from __future__ import annotations

import argparse

from dstack.cli.common import add_project_arg


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "examples:\n  dstack stop my-run -y\n  dstack stop my-run --abort\n"
    add_project_arg(parser)
    parser.add_argument("run_name", help="the run to stop")
    parser.add_argument(
        "-x", "--abort", action="store_true", help="stop immediately, without a graceful stop"
    )
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError, api_client, confirm, echo
    from dstack.cli.runs import find_run

    api = api_client(args)
    if find_run(api, args.run_name) is None:
        raise CLIError(f"Run {args.run_name} not found")
    if not args.yes and not confirm("Are you sure you want to stop the run?"):
        return 0
    api.stop_runs([args.run_name], abort=args.abort)
    _close_ssh_entry(args.run_name)
    echo("Aborted" if args.abort else "Stopped")
    return 0


def _close_ssh_entry(name: str) -> None:
    """`ssh <run>` to a stopped run says so at once instead of trying to connect."""
    import contextlib

    from dstack.cli.sshconfig import mark_stopped

    with contextlib.suppress(OSError):
        mark_stopped(name, f"run {name} was stopped; it no longer accepts SSH")
