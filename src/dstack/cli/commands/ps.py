"""`dstack ps`: the runs of a project."""

from __future__ import annotations

import argparse

from dstack.cli.common import CLIError, add_json_args, add_project_arg

EPILOG = """examples:
  dstack ps              active runs (or the latest run if none is active)
  dstack ps -a           all recent runs
  dstack ps -n 5 -v      the last 5 runs with resources, instance types and errors
  dstack ps -w           refresh every 2 seconds until Ctrl+C
  dstack ps --json       one line of JSON: {"project": ..., "runs": [...]}
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_project_arg(parser)
    parser.add_argument("-a", "--all", action="store_true", help="show all recent runs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show more columns")
    parser.add_argument("-w", "--watch", action="store_true", help="refresh every 2 seconds")
    parser.add_argument("-n", "--last", type=int, metavar="N", help="show the last N runs")
    add_json_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client

    if args.watch and args.format == "json":
        raise CLIError("JSON output is not supported together with --watch")
    api = api_client(args)
    if args.format == "json":
        return _print_json(api, args)
    if args.watch:
        return _watch(api, args)
    from dstack.cli.common import out

    out(_table(api, args))
    return 0


def _shown_raw(api, args: argparse.Namespace) -> list[dict]:  # noqa: ANN001
    """The runs to show, as the server sent them. Default: the active runs, else the latest
    run (two small pages, as the reference asks, rather than 100 runs filtered here); `-a`
    the last 100; `-n N` the last N."""
    if args.all or args.last:
        limit = args.last or 100
        return api.list_runs_raw(limit=limit, job_submissions_limit=1)[:limit]
    active = api.list_runs_raw(only_active=True, limit=100, job_submissions_limit=1)
    return active or api.list_runs_raw(limit=1, job_submissions_limit=1)


def _table(api, args: argparse.Namespace):  # noqa: ANN001, ANN202
    # Plain views of the JSON rather than the pydantic models: pydantic alone would cost
    # `ps` more than its whole time budget (issue 16; api/run_views.py).
    from dstack.api.run_views import parse_run_views
    from dstack.cli.render.runs import runs_table

    return runs_table(parse_run_views(_shown_raw(api, args)), verbose=args.verbose)


def _print_json(api, args: argparse.Namespace) -> int:  # noqa: ANN001
    from dstack.cli.common import print_json

    print_json({"project": api.project, "runs": _shown_raw(api, args)})
    return 0


def _watch(api, args: argparse.Namespace) -> int:  # noqa: ANN001
    import time

    from rich.live import Live

    from dstack.cli.common import console

    try:
        with Live(_table(api, args), console=console(), auto_refresh=False) as live:
            while True:
                time.sleep(2)
                live.update(_table(api, args), refresh=True)
    except KeyboardInterrupt:
        return 0
