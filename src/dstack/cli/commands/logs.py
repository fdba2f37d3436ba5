"""`dstack logs`: print the stored logs of a run's job."""

from __future__ import annotations

import argparse

from dstack.cli.common import add_project_arg

EPILOG = """examples:
  dstack logs my-run               all logs of the run (replica 0, job 0)
  dstack logs my-run -d            the runner's diagnostic logs
  dstack logs my-run --replica 1   logs of another replica
  dstack logs my-run --since 10m   only the last 10 minutes
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_project_arg(parser)
    parser.add_argument("run_name", help="the run")
    parser.add_argument("-d", "--diagnose", action="store_true", help="show diagnostic logs")
    parser.add_argument("--replica", type=int, default=0, metavar="N", help="replica number")
    parser.add_argument("--job", type=int, default=0, metavar="N", help="job number")
    parser.add_argument(
        "--since", metavar="SINCE", help="a duration (10s, 5m, 1d) or an RFC 3339 time"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError, api_client
    from dstack.cli.runs import LogFollower, find_run, job_submission_for_logs, parse_since

    since = parse_since(args.since) if args.since else None
    api = api_client(args)
    found = find_run(api, args.run_name)
    if found is None:
        raise CLIError(f"Run {args.run_name} not found")
    sub = job_submission_for_logs(found, args.replica, args.job)
    follower = LogFollower(api, args.run_name, sub.id, diagnose=args.diagnose, since=since)
    while follower.drain():
        pass
    return 0
