"""`dstack metrics RUN`: CPU, memory and GPU use of a run's jobs over the last hour."""

from __future__ import annotations

import argparse
from typing import Any

from dstack.cli.common import add_project_arg

REFRESH_SECONDS = 10
POINTS = 720  # an hour of samples at 5 s: more than the agent's default interval gives


def configure(parser: argparse.ArgumentParser) -> None:
    add_project_arg(parser)
    parser.add_argument("run_name", help="the run")
    parser.add_argument("-w", "--watch", action="store_true", help="refresh every 10 seconds")
    parser.add_argument("--replica", type=int, metavar="N", help="only this replica")
    parser.add_argument("--job", type=int, metavar="N", help="only this job")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, console

    api = api_client(args)
    table = _table(api, args)
    if not args.watch:
        console().print(table)
        return 0
    import time

    from rich.live import Live

    try:
        with Live(table, console=console(), auto_refresh=False) as live:
            while True:
                time.sleep(REFRESH_SECONDS)
                live.update(_table(api, args), refresh=True)
    except KeyboardInterrupt:
        return 0


def _jobs(run: Any, args: argparse.Namespace) -> list[tuple[int, int]]:
    """(replica, job) of every job of the run the flags select."""
    from dstack.cli.common import CLIError

    keys = sorted({(j.job_spec.replica_num, j.job_spec.job_num) for j in run.jobs})
    chosen = [
        (r, j)
        for r, j in keys
        if (args.replica is None or r == args.replica) and (args.job is None or j == args.job)
    ]
    if not chosen:
        raise CLIError(f"Run {args.run_name} has no matching job")
    return chosen


def _table(api: Any, args: argparse.Namespace) -> Any:
    from rich.table import Table

    from dstack.cli.common import CLIError
    from dstack.cli.metrics_view import SPAN, job_rows, time_axis
    from dstack.cli.runs import find_run
    from dstack.models.wire import utcnow

    found = find_run(api, args.run_name)
    if found is None:
        raise CLIError(f"Run {args.run_name} not found")
    jobs = _jobs(found, args)
    replicas = len({r for r, _ in jobs}) > 1 or any(r for r, _ in jobs)
    now = utcnow()
    table = Table(box=None, pad_edge=False)
    for header in ("", "", "UTILIZATION", "MEMORY"):
        table.add_column(header, no_wrap=True)
    for replica, job in jobs:
        data = api.get_job_metrics(
            args.run_name, replica, job, limit=POINTS, after=now - SPAN, before=None
        )
        label = f"replica={replica} job={job}" if replicas else f"job={job}"
        for row in job_rows(label, data, now):
            table.add_row(*row)
    live = not found.status.is_finished()
    table.add_row("", "", time_axis(live), time_axis(live))
    return table
