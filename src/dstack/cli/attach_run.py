"""Attached mode of `dstack apply`: wait for the run, attach over SSH (`ssh <run>`, forwarded
ports), stream logs, report how it ended.

Ctrl+C detaches: with `-y`, or when stdin is not a terminal, the run keeps going (`Detached`);
on a terminal the user is asked whether to stop it first.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dstack.api.client import APIClient
from dstack.cli.common import CancelledByUser, CLIError, confirm, echo
from dstack.cli.render.runs import next_start_text
from dstack.cli.runs import (
    finish_message,
    follow_logs,
    get_job,
    status_text,
    waiting_for_requests,
    waiting_for_schedule,
)
from dstack.models.runs import RunStatus


def attach(api: APIClient, name: str, *, yes: bool, args: argparse.Namespace | None = None) -> int:
    from dstack.cli.progress import StatusReporter

    attachment = None
    final = None
    try:
        with StatusReporter(f"Launching {name}...") as reporter:
            run = reporter.wait(api, name)
        if waiting_for_schedule(run):
            echo(f"{name} is waiting for schedule...")
            echo(f"Next run: {next_start_text(run)}")
            return 0
        if waiting_for_requests(run):
            echo(f"{name} is waiting for requests...")
        else:
            echo(f"{name} provisioning completed ({status_text(run)})")
        _print_service(api, run)
        if run.status == RunStatus.RUNNING:
            attachment = _open_ssh(api, run, args, yes, lambda: api.get_run(name))
        final = follow_logs(api, name)
    except KeyboardInterrupt:
        if attachment is not None:
            attachment.close(None)
        return _on_interrupt(api, name, yes)
    finally:
        if attachment is not None:
            attachment.close(final)
    text, ok = finish_message(final)
    echo(text)
    return 0 if ok else 1


def _open_ssh(
    api: APIClient, run: Any, args: argparse.Namespace | None, yes: bool, reload: Any
) -> Any:
    """SSH entries and port forwards of job 0 of the run; a failure to connect is reported
    but does not stop log streaming (the run itself is fine)."""
    from dstack.cli.attach_ssh import JobEnded, open_attachment
    from dstack.cli.ssh_relay import forced_route

    try:
        attachment = open_attachment(
            run,
            get_job(run, None, 0),
            identity=getattr(args, "ssh_identity", None),
            port_overrides=[],
            host=getattr(args, "host", None),
            yes=yes,
            action="attach",
            reload=reload,
            server=(api.base_url, api.project),
            forced_relay=forced_route(),
        )
    except JobEnded:
        return None  # a short job ended before SSH was up: no news worth a warning
    except CLIError as e:
        # A short job may end before the connection is up: that is no news worth a warning.
        try:
            ended = reload().status != RunStatus.RUNNING
        except Exception:  # noqa: BLE001 - the warning below is all we can say then
            ended = False
        if not ended:
            echo(f"Warning: {e}")
        return None
    attachment.print_summary(None)
    return attachment


def _print_service(api: APIClient, run) -> None:  # noqa: ANN001
    if run.service is None:
        return
    url = run.service.url
    if url.startswith("/"):
        url = api.base_url + url
    echo("Service is published at:")
    echo(f"  {url}")
    if run.service.model is not None:
        base = run.service.model.base_url
        if base.startswith("/"):
            base = api.base_url + base
        echo(f"Model {run.service.model.name} is published at:")
        echo(f"  {base}")


def _on_interrupt(api: APIClient, name: str, yes: bool) -> int:
    echo("")
    if yes or not sys.stdin.isatty():
        echo("Detached")
        return 0
    try:
        stop = confirm(f"Stop the run {name} before detaching?")
    except CancelledByUser:
        stop = False
    if not stop:
        echo("Detached")
        return 0
    try:
        api.stop_runs([name], abort=False)
        _wait_finished(api, name)
        echo("Stopped")
    except KeyboardInterrupt:
        api.stop_runs([name], abort=True)
        echo("Aborted")
    return 0


def _wait_finished(api: APIClient, name: str) -> None:
    import time

    while not api.get_run(name).status.is_finished():
        time.sleep(1.0)
