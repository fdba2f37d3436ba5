"""`dstack attach`: wait until a run is running, then make `ssh <run>` work, forward its ports
to localhost, and (with `--logs`) replay and follow its logs (cli.md §7)."""

from __future__ import annotations

import argparse

from dstack.cli.common import add_project_arg

EPILOG = """examples:
  dstack attach my-run             `ssh my-run` works and ports are forwarded until Ctrl+C
  dstack attach my-run --logs      the same, and replay then follow the logs
  dstack attach my-run -p 8081:80  forward the run's port 80 to localhost:8081
  dstack attach my-run --job 1     job 1 of a multi-node task (`ssh my-run-1-0`)
  dstack attach my-run --ssh-via-server
                                   `ssh my-run` goes through the dstack server

The run's SSH entry is written to ~/.dstack/ssh/config; `-y` adds `Include` of that file to
~/.ssh/config without asking (once; remove the two marked lines to undo).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_project_arg(parser)
    parser.add_argument("run_name", help="the run")
    parser.add_argument("--logs", action="store_true", help="replay and follow the run's logs")
    parser.add_argument("--replica", type=int, default=None, metavar="N", help="replica number")
    parser.add_argument("--job", type=int, default=0, metavar="N", help="job number")
    parser.add_argument(
        "--ssh-identity",
        metavar="SSH_PRIVATE_KEY",
        help="private key for SSH (default ~/.dstack/ssh/id_rsa)",
    )
    parser.add_argument(
        "--host", metavar="HOST", help="local address forwarded ports bind to (default localhost)"
    )
    parser.add_argument(
        "-p",
        "--port",
        action="append",
        default=[],
        metavar="MAPPING",
        help="forward a run port to another local port, e.g. 8081:80",
    )
    parser.add_argument(
        "--ssh-via-server",
        action="store_true",
        help="reach the run's SSH server through the dstack server even if its host is "
        "reachable from here (also DSTACK_SSH_VIA_SERVER=1; =0 never goes through the server)",
    )
    parser.add_argument(
        "-y", "--yes", action="store_true", help="add the Include to ~/.ssh/config without asking"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError, api_client, echo
    from dstack.cli.progress import StatusReporter
    from dstack.cli.runs import find_run, finish_message, get_job, status_text
    from dstack.models.runs import RunStatus

    api = api_client(args)
    found = find_run(api, args.run_name)
    if found is None:
        raise CLIError(f"Run {args.run_name} not found")
    if found.status.is_finished() and found.status != RunStatus.DONE:
        raise CLIError(f"Run {args.run_name} is {status_text(found)}")
    with StatusReporter(f"Attaching to {args.run_name}...") as reporter:
        found = reporter.wait(api, args.run_name)
    echo(f"Provisioning {args.run_name} completed ({status_text(found)})")
    if found.status.is_finished() and found.status != RunStatus.DONE:
        raise CLIError(f"Run {args.run_name} is {status_text(found)}")
    job = get_job(found, args.replica, args.job)
    if found.status == RunStatus.RUNNING:
        found, job = _job_started(api, args.run_name, found, job)
    attachment = None
    if found.status == RunStatus.RUNNING:
        from dstack.cli.attach_ssh import open_attachment
        from dstack.cli.ssh_relay import forced_route

        attachment = open_attachment(
            found, job, identity=args.ssh_identity, port_overrides=args.port,
            host=args.host, yes=args.yes, action="attach",
            reload=lambda: api.get_run(args.run_name),
            server=(api.base_url, api.project),
            forced_relay=forced_route(args.ssh_via_server),
        )  # fmt: skip
    elif not args.logs:
        status = status_text(found)
        raise CLIError(f"Run {args.run_name} is {status}; there is nothing to attach to")
    final = None
    try:
        if attachment is not None:
            attachment.print_summary(
                f"Attached to run {args.run_name} "
                f"(replica={job.job_spec.replica_num} job={job.job_spec.job_num})"
            )
        if args.logs:
            final = _follow(api, args.run_name, job)
        else:
            echo("Press Ctrl+C to detach...")
            final = _wait(api, args.run_name, attachment)
    except KeyboardInterrupt:
        echo("\nDetached")
        return 0
    finally:
        if attachment is not None:
            attachment.close(final)
    text, ok = finish_message(final)
    echo(text)
    return 0 if ok else 1


def _job_started(api, name: str, run, job, timeout: float = 120):  # noqa: ANN001, ANN202
    """A multi-node run is running once any job runs; wait for the chosen job to run too
    (or end), so `--job N` gets its SSH entries rather than "not started yet"."""
    import time

    from dstack.cli.runs import get_job
    from dstack.models.runs import JobStatus, RunStatus

    key = (job.job_spec.replica_num, job.job_spec.job_num)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.status == RunStatus.RUNNING:
        sub = job.job_submissions[-1] if job.job_submissions else None
        if sub is not None and (sub.status == JobStatus.RUNNING or sub.status.is_finished()):
            break
        time.sleep(1)
        run = api.get_run(name)
        job = get_job(run, *key)
    return run, job


def _follow(api, name: str, job):  # noqa: ANN001, ANN202
    from dstack.cli.runs import follow_logs

    return follow_logs(api, name, replica=job.job_spec.replica_num, job_num=job.job_spec.job_num)


def _wait(api, name: str, attachment):  # noqa: ANN001, ANN202
    """Stay attached until Ctrl+C or the run ends (its tunnel dies with its SSH server)."""
    import time

    while True:
        run = api.get_run(name)
        if run.status.is_finished():
            return run
        if attachment is not None and not attachment.alive():
            time.sleep(1.0)  # the job's sshd went away: the run is ending, report how
            continue
        time.sleep(2.0)
