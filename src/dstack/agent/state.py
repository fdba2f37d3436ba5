"""A job's state, derived from its files alone, so an agent restart loses nothing."""

from __future__ import annotations

from typing import Any

from dstack.agent import protocol as p
from dstack.agent.protocol import FINISHED, JobState
from dstack.agent.sshd import no_connections_secs

SUPERVISOR_LOST = (
    "The job's supervisor process exited without recording a result "
    "(the host rebooted or the process was killed); the job's outcome is unknown."
)


def derive_state(
    spec: dict[str, Any],
    supervisor: dict[str, Any] | None,
    alive: bool,
    result: dict[str, Any] | None,
    ports: dict[str, int] | None,
    log_bytes: int,
    stop: dict[str, Any] | None,
    ssh: dict[str, Any] | None = None,
    activity: dict[str, Any] | None = None,
    listen: dict[str, Any] | None = None,
) -> JobState:
    """`result` must be read after `alive` was checked, so a supervisor that finishes
    in between is seen with its result rather than as lost. The fields are the protocol's
    `JobState`: a field added here without it there fails its test."""
    state = JobState(
        id=spec["id"],
        name=spec.get("name"),
        status=p.SUBMITTED,
        exit_status=None,
        termination_reason=None,
        termination_message=None,
        submitted_at=spec.get("submitted_at"),
        started_at=supervisor.get("started_at") if supervisor else None,
        finished_at=None,
        runtime=spec.get("runtime", "process"),
        ports={str(k): int(v) for k, v in (ports or {}).items()},
        log_bytes=log_bytes,
        stop_requested=stop is not None,
        ssh_port=(ssh or {}).get("port"),
        ssh_user=(ssh or {}).get("user"),
        ssh_error=(ssh or {}).get("error"),
        ssh_ready=bool((ssh or {}).get("port") and (ssh or {}).get("listening")),
        working_dir=(ssh or {}).get("working_dir"),
        no_connections_secs=no_connections_secs(activity) if (ssh or {}).get("port") else None,
        # The port the app was told to listen on (DSTACK_SERVICE_PORT), once chosen.
        listen_port=(listen or {}).get("port"),
    )
    if result is not None:
        state.update(
            status=result.get("status", p.FAILED),
            exit_status=result.get("exit_status"),
            termination_reason=result.get("termination_reason"),
            termination_message=result.get("termination_message"),
            finished_at=result.get("finished_at"),
        )
    elif supervisor is not None:
        if alive:
            state["status"] = p.RUNNING
        else:
            state.update(
                status=p.FAILED,
                termination_reason=p.EXECUTOR_ERROR,
                termination_message=SUPERVISOR_LOST,
            )
    return state


def is_finished(state: JobState) -> bool:
    return state["status"] in FINISHED
