"""`dstack attach`: wait until a run is running, then (with `--logs`) stream its logs."""

from __future__ import annotations

import argparse

from dstack.cli.common import add_project_arg

EPILOG = """examples:
  dstack attach my-run --logs    wait for the run, replay and follow its logs

Note: SSH access and port forwarding are not implemented yet (a later release); for now
attach waits for the run and streams logs.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_project_arg(parser)
    parser.add_argument("run_name", help="the run")
    parser.add_argument("--logs", action="store_true", help="stream the run's logs")
    parser.add_argument("--replica", type=int, default=None, metavar="N", help="replica number")
    parser.add_argument("--job", type=int, default=0, metavar="N", help="job number")
    parser.add_argument("--ssh-identity", metavar="SSH_PRIVATE_KEY",
                        help="accepted for compatibility; SSH is not implemented yet")
    parser.add_argument("--host", help="accepted for compatibility; ports are not forwarded yet")
    parser.add_argument("-p", "--port", action="append", metavar="MAPPING",
                        help="accepted for compatibility; ports are not forwarded yet")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError, api_client, echo
    from dstack.cli.progress import StatusReporter
    from dstack.cli.runs import find_run, finish_message, follow_logs, get_job, status_text
    from dstack.models.runs import RunStatus

    api = api_client(args)
    found = find_run(api, args.run_name)
    if found is None:
        raise CLIError(f"Run {args.run_name} not found")
    with StatusReporter(f"Attaching to {args.run_name}...") as reporter:
        found = reporter.wait(api, args.run_name)
    echo(f"Provisioning {args.run_name} completed ({status_text(found)})")
    if found.status.is_finished() and found.status != RunStatus.DONE:
        raise CLIError(f"Run {args.run_name} is {status_text(found)}")
    job = get_job(found, args.replica, args.job)
    echo(f"Attached to run {args.run_name} "
         f"(replica={job.job_spec.replica_num} job={job.job_spec.job_num})")
    try:
        if not args.logs:
            echo("Press Ctrl+C to detach...")
            import time

            while True:
                time.sleep(3600)
        final = follow_logs(api, args.run_name, replica=job.job_spec.replica_num,
                            job_num=job.job_spec.job_num)
    except KeyboardInterrupt:
        echo("\nDetached")
        return 0
    text, ok = finish_message(final)
    echo(text)
    return 0 if ok else 1
