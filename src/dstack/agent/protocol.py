"""The agent's wire protocol: everything the agent (`agent/server.py`) and the server's client
(`server/agent_client.py`) must agree on, in one place, so neither side spells a path, a header
or a field name of its own. Standard library only: the agent imports it on bare hosts.

docs/agent.md describes the protocol for people; this module is what the code uses.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypedDict
from urllib.parse import quote


class Route:
    """One endpoint: its method and its path template (`{id}` is a job id)."""

    __slots__ = ("method", "template", "_pattern")

    def __init__(self, method: str, template: str) -> None:
        self.method = method
        self.template = template
        parts = re.split(r"\{(\w+)\}", template)
        regex = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
        )
        self._pattern = re.compile(f"^{regex}$")

    def path(self, job_id: str | None = None) -> str:
        """The concrete path. Any id is quoted into one path segment (an invalid one is the
        agent's 404, never another endpoint)."""
        if "{id}" not in self.template:
            return self.template
        if job_id is None:
            raise ValueError(f"{self.template}: a job id is required")
        return self.template.replace("{id}", quote(job_id, safe=""))

    def match(self, path: str) -> re.Match[str] | None:
        return self._pattern.match(path)

    def __repr__(self) -> str:
        return f"Route({self.method} {self.template})"


# A job id: what a path segment, a directory name and a docker container suffix may all hold.
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")

HEALTHCHECK = Route("GET", "/api/healthcheck")
HOST_INFO = Route("GET", "/api/host_info")
LIST_JOBS = Route("GET", "/api/jobs")
START_JOB = Route("POST", "/api/jobs/{id}/start")
GET_JOB = Route("GET", "/api/jobs/{id}")
JOB_LOGS = Route("GET", "/api/jobs/{id}/logs")
STOP_JOB = Route("POST", "/api/jobs/{id}/stop")
REMOVE_JOB = Route("POST", "/api/jobs/{id}/remove")
# Remove a directory volume's data from the host (`{id}` is the volume's id); refused (409)
# while a job that is not finished mounts it.
DELETE_VOLUME_DIR = Route("POST", "/api/volumes/{id}/delete")

ROUTES: tuple[Route, ...] = (
    HEALTHCHECK,
    HOST_INFO,
    LIST_JOBS,
    START_JOB,
    GET_JOB,
    JOB_LOGS,
    STOP_JOB,
    REMOVE_JOB,
    DELETE_VOLUME_DIR,
)
# Only the healthcheck answers without the token: it is how a caller finds out whether
# something at the port is an agent at all.
UNAUTHENTICATED: tuple[Route, ...] = (HEALTHCHECK,)

SERVICE_NAME = "dstack-agent"

# --- headers ---------------------------------------------------------------------------------
AUTHORIZATION = "Authorization"
BEARER = "Bearer"
CONTENT_TYPE = "Content-Type"
JSON_TYPE = "application/json"
# The start body: the JSON spec (SPEC_LENGTH bytes), then the code archive (.tar.gz) to the end
# of the body (its length is Content-Length minus SPEC_LENGTH; zero bytes = no code).
START_TYPE = "application/vnd.dstack.job-start"
SPEC_LENGTH = "X-Dstack-Spec-Length"

# --- limits ----------------------------------------------------------------------------------
MAX_JSON_BODY = 16 * 1024 * 1024  # any JSON body, and the spec part of a start
MAX_CODE_BODY = 4 * 1024 * 1024 * 1024  # the code part of a start
LOGS_DEFAULT_LIMIT = 256 * 1024
LOGS_MAX_LIMIT = 4 * 1024 * 1024
# Query parameters of JOB_LOGS.
OFFSET = "offset"
LIMIT = "limit"

# --- the job state ---------------------------------------------------------------------------
SUBMITTED = "submitted"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
TERMINATED = "terminated"
FINISHED = (DONE, FAILED, TERMINATED)

# Termination reasons the agent itself writes (a stop may name any other reason).
DONE_BY_RUNNER = "done_by_runner"
CONTAINER_EXITED_WITH_ERROR = "container_exited_with_error"
TERMINATED_BY_SERVER = "terminated_by_server"
MAX_DURATION_EXCEEDED = "max_duration_exceeded"
EXECUTOR_ERROR = "executor_error"
CREATING_CONTAINER_ERROR = "creating_container_error"
PORTS_BINDING_FAILED = "ports_binding_failed"
VOLUME_ERROR = "volume_error"


class JobState(TypedDict):
    """What GET_JOB, START_JOB and each item of LIST_JOBS answer about one job."""

    id: str
    name: str | None
    status: str  # SUBMITTED RUNNING or one of FINISHED
    exit_status: int | None
    termination_reason: str | None
    termination_message: str | None
    submitted_at: str | None  # ISO 8601 UTC
    started_at: str | None
    finished_at: str | None
    runtime: str  # process | docker
    ports: dict[str, int]  # container port -> host port (docker)
    log_bytes: int
    stop_requested: bool
    ssh_port: int | None
    ssh_user: str | None
    ssh_error: str | None
    ssh_ready: bool  # the job's SSH server accepts connections on ssh_port
    working_dir: str | None
    no_connections_secs: int | None
    listen_port: int | None


JOB_STATE_FIELDS: tuple[str, ...] = tuple(JobState.__annotations__)

# LIST_JOBS answers {JOBS: [JobState, ...]}: every job on the host.
JOBS = "jobs"
# LIST_JOBS?METRICS_AFTER=TS (seconds since the epoch) adds {METRICS: {job id: [sample, ...]}},
# the job's resource samples newer than TS (agent/metrics.py), oldest first. Without the
# parameter the answer carries no metrics.
METRICS_AFTER = "metrics_after"
METRICS = "metrics"
# Long poll: LIST_JOBS?CHANGED_AFTER=C&WAIT=S answers once the host's change cursor differs
# from C (a job started, exited, was stopped or removed, wrote output, its SSH server came
# up), or after S seconds (at most MAX_WAIT), whichever is first. Every LIST_JOBS answer
# carries {CHANGES: cursor}: the cursor as it was just before the jobs were read. Without
# CHANGED_AFTER (or with a cursor of an earlier agent process) the answer comes at once.
CHANGED_AFTER = "changed_after"
WAIT = "wait"
CHANGES = "changes"
MAX_WAIT = 60.0

# STOP_JOB's body.
ABORT = "abort"
REASON = "reason"
MESSAGE = "message"

# --- errors ----------------------------------------------------------------------------------
# Every error is {ERROR: "..."} with a 4xx/5xx status; a client error's message starts with the
# name of the offending field.
ERROR = "error"


def error_body(message: str) -> dict[str, str]:
    return {ERROR: message}


def error_message(body: Any) -> str | None:
    """The message of an error body, or None when `body` is not one."""
    if isinstance(body, dict) and isinstance(body.get(ERROR), str):
        return body[ERROR]
    return None


def jobs_body(
    states: list[JobState],
    metrics: dict[str, list[dict[str, Any]]] | None = None,
    changes: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {JOBS: states}
    if changes is not None:
        body[CHANGES] = changes
    if metrics is not None:
        body[METRICS] = metrics
    return body


def metrics_of(body: Any) -> dict[str, list[dict[str, Any]]]:
    """The samples in a LIST_JOBS answer ({} when there are none); ValueError when malformed."""
    metrics = body.get(METRICS) if isinstance(body, dict) else None
    if metrics is None:
        return {}
    if not isinstance(metrics, dict) or not all(
        isinstance(v, list) and all(isinstance(x, dict) and "ts" in x for x in v)
        for v in metrics.values()
    ):
        raise ValueError(f"{METRICS}: expected a map of job ids to lists of samples")
    return metrics


def changes_of(body: Any) -> str | None:
    """The change cursor of a LIST_JOBS answer (None from an agent without long polls)."""
    value = body.get(CHANGES) if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def jobs_of(body: Any) -> list[JobState]:
    """The states in a LIST_JOBS answer; ValueError when it is not one."""
    jobs = body.get(JOBS) if isinstance(body, dict) else None
    if not isinstance(jobs, list) or not all(
        isinstance(j, dict) and isinstance(j.get("id"), str) for j in jobs
    ):
        raise ValueError(f"{JOBS}: expected a list of job states")
    return jobs


# --- the start body --------------------------------------------------------------------------


def encode_start(spec: dict[str, Any], code: bytes) -> tuple[dict[str, str], bytes]:
    """Headers and body of START_JOB: one request carries the spec and the code, so a start is
    one round trip and never half done (a spec without its code)."""
    raw = json.dumps(spec, separators=(",", ":"), sort_keys=True).encode()
    headers = {CONTENT_TYPE: START_TYPE, SPEC_LENGTH: str(len(raw))}
    return headers, raw + code


def spec_length(header: str | None, content_length: int) -> int:
    """The spec part's length from its header; ValueError (naming the header) when it is
    missing, not a number, or does not fit the body."""
    if header is None:
        raise ValueError(f"{SPEC_LENGTH}: required")
    try:
        length = int(header)
    except ValueError:
        raise ValueError(f"{SPEC_LENGTH}: not an integer") from None
    if not 0 < length <= min(content_length, MAX_JSON_BODY):
        raise ValueError(f"{SPEC_LENGTH}: must be between 1 and the body's length")
    return length
