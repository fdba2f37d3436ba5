"""Run helpers shared by `apply`, `attach`, `logs` and `stop`: lookup, waiting, log streaming.

Logs are followed through the server's `logs/poll` cursor (not a direct connection to the
host), so attaching works wherever the CLI can reach the server.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from dstack.api.client import APIClient, ServerError
from dstack.cli.common import CLIError
from dstack.models.logs import PollLogsRequest
from dstack.models.runs import Job, JobSubmission, Run, RunStatus

POLL_INTERVAL = 1.0
# A follower's long poll (`logs/poll` with `wait`): the server answers as soon as there are
# new records or the run has finished.
LONG_POLL = 20.0


class Backoff:
    """Poll fast right after a change, then slow down to POLL_INTERVAL: short runs finish
    in a fraction of a second, long ones cost one request a second."""

    def __init__(self, start: float = 0.05, factor: float = 1.5, cap: float = POLL_INTERVAL):
        self.start, self.factor, self.cap = start, factor, cap
        self.delay = start

    def reset(self) -> None:
        self.delay = self.start

    def sleep(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.cap, self.delay * self.factor)
NO_CAPACITY = {"failed_to_start_due_to_no_capacity", "interrupted_by_no_capacity"}


def is_not_found(error: ServerError) -> bool:
    text = (error.message or "").lower()
    return (
        error.status_code == 404
        or (error.code or "") in ("resource_not_exists", "not_found")
        or "not found" in text
        or "does not exist" in text
    )


def find_run(api: APIClient, name: str) -> Run | None:
    try:
        return api.get_run(name)
    except ServerError as e:
        if is_not_found(e):
            return None
        raise


def get_job(run: Run, replica: int | None = 0, job_num: int = 0) -> Job:
    """The job to show; without `replica`, a running replica, else the lowest one."""
    jobs = [j for j in run.jobs if j.job_spec.job_num == job_num]
    if replica is None:
        running = [j for j in jobs if _latest(j) and _latest(j).status.value == "running"]
        jobs = running or sorted(jobs, key=lambda j: j.job_spec.replica_num)[:1]
    else:
        jobs = [j for j in jobs if j.job_spec.replica_num == replica]
    if not jobs:
        raise CLIError(f"Run {run.run_spec.run_name} has no job replica={replica} job={job_num}")
    return jobs[0]


def _latest(job: Job) -> JobSubmission | None:
    return job.job_submissions[-1] if job.job_submissions else None


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """`10s`, `5m`, `1d` back from now, or an RFC 3339 time with a timezone."""
    now = now or datetime.now(timezone.utc)
    text = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if text[:-1].isdigit() and text[-1:] in units:
        return now - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    if text.isdigit():
        return now - timedelta(seconds=int(text))
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise CLIError(f"Invalid --since value '{value}': use e.g. 10s, 5m, 1d or an RFC 3339 "
                       "time such as 2026-01-05T10:00:00Z") from e
    if when.tzinfo is None:
        raise CLIError(f"Invalid --since value '{value}': the time needs a timezone")
    return when


class LogFollower:
    """A cursor over one job submission's logs.

    The server's `next_token` is the position after the last record returned and is null
    when nothing new was there; we then keep our last token and poll again later.
    """

    def __init__(
        self, api: APIClient, run_name: str, submission_id: str, *, diagnose: bool = False,
        since: datetime | None = None, write: Callable[[bytes], None] | None = None,
    ) -> None:
        self.api, self.run_name, self.submission_id = api, run_name, submission_id
        self.diagnose = diagnose
        self.token: str | None = None
        self.since = since
        self.write = write or _write_stdout

    def drain(self, wait: float = 0.0) -> int:
        """Print everything available now; return how many events were printed. With `wait`,
        the first request is a long poll: when nothing is there yet, the server holds it
        until something is (or the run finishes, or `wait` seconds pass)."""
        printed = 0
        while True:
            req = PollLogsRequest(
                run_name=self.run_name, job_submission_id=self.submission_id,
                next_token=self.token, start_time=self.since, diagnose=self.diagnose,
                limit=1000, wait=wait,
            )
            wait = 0.0
            page = self.api.poll_logs(req)
            for event in page.logs:
                self.write(base64.b64decode(event.message))
                printed += 1
            if page.next_token is None or page.next_token == self.token:
                return printed
            self.token = page.next_token
            if not page.logs:
                return printed


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def status_text(run: Run) -> str:
    from dstack.cli.render.runs import run_status_text

    return run_status_text(run)


def wait_until_started(
    api: APIClient, name: str, on_change: Callable[[Run], None] | None = None
) -> Run:
    """Poll until the run leaves submitted/pending/provisioning; report each new status."""
    seen = None
    backoff = Backoff()
    while True:
        run = api.get_run(name)
        text = status_text(run)
        if text != seen:
            backoff.reset()
            if on_change is not None:
                on_change(run)
        seen = text
        if run.status not in (RunStatus.PENDING, RunStatus.SUBMITTED, RunStatus.PROVISIONING):
            return run
        if waiting_for_requests(run) or waiting_for_schedule(run):
            return run
        backoff.sleep()


def waiting_for_schedule(run: Run) -> bool:
    """A scheduled run between its starts: pending until `next_triggered_at`."""
    return run.status == RunStatus.PENDING and run.next_triggered_at is not None


def waiting_for_requests(run: Run) -> bool:
    """A service scaled to zero: pending with every replica stopped by the autoscaler; it
    starts one when a request arrives."""
    if run.status != RunStatus.PENDING or run.service is None or not run.jobs:
        return False
    subs = [j.job_submissions[-1] for j in run.jobs if j.job_submissions]
    return bool(subs) and all(s.termination_reason == "scaled_down" for s in subs)


def follow_logs(
    api: APIClient, name: str, *, diagnose: bool = False, replica: int = 0, job_num: int = 0
) -> Run:
    """Stream the job's logs until the run finishes; re-attach to resubmissions (retry).

    Between looks at the run, a long poll of the logs waits for the server to say something
    happened (new output, the run's end). An empty answer that came back at once (a server
    without long polls) makes the next one wait a backing-off pause first."""
    follower: LogFollower | None = None
    backoff = Backoff()
    quick_empty = False
    while True:
        run = api.get_run(name)
        sub = _latest(get_job(run, replica, job_num)) if run.jobs else None
        if sub is not None and (follower is None or follower.submission_id != sub.id):
            follower = LogFollower(api, name, sub.id, diagnose=diagnose)
        printed = follower.drain() if follower is not None else 0
        if run.status.is_finished():
            if follower is not None:
                follower.drain()
            return run
        if printed:
            backoff.reset()
            quick_empty = False
            continue
        if follower is None or quick_empty:
            backoff.sleep()
        if follower is not None:
            started = time.monotonic()
            while follower.drain(wait=LONG_POLL):  # output keeps coming: no need to look
                started = time.monotonic()
            quick_empty = time.monotonic() - started < LONG_POLL / 4
            if not quick_empty:
                backoff.reset()


def finish_message(run: Run) -> tuple[str, bool]:
    """The closing line of an attached run and whether it counts as success."""
    if run.status == RunStatus.DONE:
        return (status_text(run).capitalize() or "Done"), True
    sub = run.latest_job_submission
    lines = [f"Run {run.run_spec.run_name} {status_text(run)}"]
    if run.error:
        lines.append(f"Error: {run.error}")
    if sub is not None and sub.termination_reason_message:
        lines.append(sub.termination_reason_message)
    reason = sub.termination_reason if sub is not None else None
    if run.status != RunStatus.TERMINATED and reason not in NO_CAPACITY:
        lines.append(f"Check `dstack logs -d {run.run_spec.run_name}` for more details.")
    return "\n".join(lines), False


def job_submission_for_logs(
    run: Run, replica: int, job_num: int
) -> JobSubmission:
    sub = _latest(get_job(run, replica, job_num))
    if sub is None:
        raise CLIError(f"Run {run.run_spec.run_name} has not been submitted yet")
    return sub
