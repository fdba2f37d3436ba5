"""`dstack run get NAME --json`: one run as the server returns it."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from dstack.cli.common import add_project_arg

    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    get = sub.add_parser("get", help="print a run as JSON", description="Print a run as JSON")
    add_project_arg(get)
    get.add_argument("name", nargs="?", help="the run name")
    get.add_argument("--id", help="the run id (instead of the name)")
    get.add_argument("--json", action="store_true", required=True, help="output JSON (required)")
    get.set_defaults(handler=_get)


def _get(args: argparse.Namespace) -> int:
    from dstack.api.client import ServerError
    from dstack.cli.common import CLIError, api_client, print_json

    if not args.name and not args.id:
        raise CLIError("Specify a run name or --id")
    api = api_client(args)
    try:
        raw = api.get_run_raw(args.name, args.id)
    except ServerError as e:
        if e.status_code in (400, 404):
            raise CLIError(f"Run {args.name or args.id} not found") from e
        raise
    print_json(raw, indent=2)
    return 0
