"""Database rows -> the `Run` objects the API returns (cli.md §23, server.md §3.7).

Status messages and costs are computed on read, as the reference does, so they never go stale.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime

from dstack.models.runs import (
    Job,
    JobProvisioningData,
    JobRuntimeData,
    JobSpec,
    JobStatus,
    JobSubmission,
    JobTerminationReason,
    Run,
    RunFleetRef,
    RunSpec,
    RunStatus,
    RunTerminationReason,
    ServiceModelInfo,
    ServiceSpec,
)
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.services.repos import without_creds

JOB_ERRORS = {
    JobTerminationReason.INSTANCE_UNREACHABLE.value: "instance unreachable",
    JobTerminationReason.INSTANCE_ACCESS_REVOKED.value: "instance access revoked",
    JobTerminationReason.WAITING_INSTANCE_LIMIT_EXCEEDED.value: "waiting instance limit exceeded",
    JobTerminationReason.WAITING_RUNNER_LIMIT_EXCEEDED.value: "waiting runner limit exceeded",
    JobTerminationReason.VOLUME_ERROR.value: "volume error",
    JobTerminationReason.GATEWAY_ERROR.value: "gateway error",
    JobTerminationReason.SCALED_DOWN.value: "scaled down",
    JobTerminationReason.INACTIVITY_DURATION_EXCEEDED.value: "inactivity duration exceeded",
    JobTerminationReason.TERMINATED_DUE_TO_UTILIZATION_POLICY.value: "utilization policy",
    JobTerminationReason.PORTS_BINDING_FAILED.value: "ports binding failed",
    JobTerminationReason.CREATING_CONTAINER_ERROR.value: "runner error",
    JobTerminationReason.EXECUTOR_ERROR.value: "executor error",
    JobTerminationReason.MAX_DURATION_EXCEEDED.value: "max duration exceeded",
    JobTerminationReason.LOG_QUOTA_EXCEEDED.value: "log quota exceeded",
}
RUN_ERRORS = {
    RunTerminationReason.RETRY_LIMIT_EXCEEDED.value: "retry limit exceeded",
    RunTerminationReason.SERVER_ERROR.value: "server error",
    RunTerminationReason.GATEWAY_ERROR.value: "gateway error",
}


def job_status_message(job: t.Job) -> str:
    status, reason = job.status, job.termination_reason
    if status == JobStatus.DONE.value:
        return "exited (0)"
    if status == JobStatus.FAILED.value:
        if reason == JobTerminationReason.CONTAINER_EXITED_WITH_ERROR.value:
            return f"exited ({job.exit_status})"
        if reason == JobTerminationReason.FAILED_TO_START_DUE_TO_NO_CAPACITY.value:
            msg = job.termination_reason_message or ""
            return "no fleets" if "No matching fleet found" in msg else "no capacity"
        if reason == JobTerminationReason.INTERRUPTED_BY_NO_CAPACITY.value:
            return "interrupted"
        return "error"
    stopped_by_user = reason == JobTerminationReason.TERMINATED_BY_USER.value
    if status == JobStatus.TERMINATED.value and stopped_by_user:
        return "stopped"
    return status


def submission_model(job: t.Job, note: str | None = None) -> JobSubmission:
    """`note`: why the job's instance is not up yet (shown with `provisioning`)."""
    jpd = (
        JobProvisioningData.model_validate_json(job.job_provisioning_data)
        if job.job_provisioning_data
        else None
    )
    jrd = JobRuntimeData.model_validate_json(job.job_runtime_data) if job.job_runtime_data else None
    return JobSubmission(
        id=job.id,
        submission_num=job.submission_num,
        deployment_num=job.deployment_num,
        submitted_at=job.submitted_at,
        last_processed_at=job.last_processed_at,
        finished_at=job.finished_at,
        inactivity_secs=job.inactivity_secs,
        status=JobStatus(job.status),
        status_message=(f"{job_status_message(job)} ({note})" if note else job_status_message(job)),
        termination_reason=job.termination_reason,
        termination_reason_message=job.termination_reason_message,
        exit_status=job.exit_status,
        job_provisioning_data=jpd,
        job_runtime_data=jrd,
        error=JOB_ERRORS.get(job.termination_reason or ""),
        probes=[{"success_streak": n} for n in json.loads(job.probe_streaks or "[]")],
        tried_offers=json.loads(job.tried_offers or "[]"),
    )


def _with_note(message: str, latest: JobSubmission | None) -> str:
    """A run whose first job is provisioning shows why its instance is not up yet, when the
    backend said (`provisioning (pending in Slurm (Resources))`)."""
    noted = latest is not None and latest.status == JobStatus.PROVISIONING
    if noted and latest.status_message.startswith(f"{latest.status.value} ("):
        return latest.status_message
    return message


def _cost(subs: list[JobSubmission], now: datetime) -> float:
    total = 0.0
    for sub in subs:
        if sub.job_provisioning_data is None:
            continue
        end = sub.finished_at or now
        hours = max(0.0, (end - sub.submitted_at).total_seconds() / 3600)
        total += sub.job_provisioning_data.price * hours
    return round(total, 4)


def run_status_message(run: t.Run, latest: list[t.Job]) -> str:
    status = RunStatus(run.status)
    if status.is_finished():
        return status.value
    if latest and all(j.status == JobStatus.PULLING.value for j in latest):
        return JobStatus.PULLING.value
    no_capacity = JobTerminationReason.FAILED_TO_START_DUE_TO_NO_CAPACITY.value
    if status in (RunStatus.SUBMITTED, RunStatus.PENDING) and any(
        j.termination_reason == no_capacity for j in latest
    ):
        return "retrying"
    return status.value


REDACTED = "<redacted>"


def redact_run_spec(spec: RunSpec) -> RunSpec:
    """The run as the API shows it: `registry_auth.password` is kept for the image pull only
    (the agent gets it when the job starts), never shown back."""
    spec = without_creds(spec)
    auth = spec.configuration.get("registry_auth")
    if not isinstance(auth, dict) or "password" not in auth:
        return spec
    conf = dict(spec.configuration, registry_auth=dict(auth, password=REDACTED))
    return spec.model_copy(update={"configuration": conf})


def run_model(
    run: t.Run,
    jobs: list[t.Job],
    *,
    project_name: str,
    user_name: str,
    fleet: t.Fleet | None,
    submissions_limit: int | None = None,
    server_url_path: str = "",
    connection_info: bool = False,
    instance_notes: dict[str, str] | None = None,
) -> Run:
    now = utcnow()
    by_job: dict[tuple[int, int], list[t.Job]] = defaultdict(list)
    for j in sorted(jobs, key=lambda j: (j.replica_num, j.job_num, j.submission_num)):
        by_job[(j.replica_num, j.job_num)].append(j)
    job_models: list[Job] = []
    all_subs: list[JobSubmission] = []
    latest_rows: list[t.Job] = []
    spec = redact_run_spec(RunSpec.model_validate_json(run.run_spec))
    for key in sorted(by_job):
        rows = by_job[key]
        latest_rows.append(rows[-1])
        if submissions_limit:
            rows = rows[-submissions_limit:]
        notes = instance_notes or {}
        subs = [submission_model(r, notes.get(r.instance_id or "")) for r in rows]
        all_subs.extend(subs)
        job_spec = JobSpec.model_validate_json(rows[-1].job_spec)
        info = job_connection_info(spec, job_spec, subs[-1]) if connection_info else None
        job_models.append(Job(job_spec=job_spec, job_submissions=subs, job_connection_info=info))
    latest = job_models[0].job_submissions[-1] if job_models else None
    status = RunStatus(run.status)
    return Run(
        id=run.id,
        project_name=project_name,
        user=user_name,
        fleet=RunFleetRef(id=fleet.id, name=fleet.name) if fleet else None,
        submitted_at=run.submitted_at,
        last_processed_at=run.last_processed_at,
        status=status,
        status_message=_with_note(run_status_message(run, latest_rows), latest),
        termination_reason=run.termination_reason,
        run_spec=spec,
        jobs=job_models,
        latest_job_submission=latest,
        cost=_cost(all_subs, now),
        service=_service(spec, project_name),
        deployment_num=run.deployment_num,
        generation=run.generation or 1,
        error=RUN_ERRORS.get(run.termination_reason or ""),
        deleted=run.deleted,
        next_triggered_at=None if status.is_finished() else run.next_triggered_at,
    )


IDE_SCHEMES = {"vscode": "vscode", "cursor": "cursor", "windsurf": "windsurf"}


def job_connection_info(
    spec: RunSpec, job_spec: JobSpec, sub: JobSubmission
) -> dict[str, str | None] | None:
    """How to reach a running job (runs/get only; docs/api.md "Job connection info"): the SSH
    alias `dstack attach` writes (the run's name for replica 0 job 0, else the job's name
    `<run>-<job>-<replica>`), the `ssh` command, the job's working dir, and for a dev
    environment with an IDE the IDE's remote-SSH URL. `None` unless the job is running."""
    if sub.status != JobStatus.RUNNING:
        return None
    if job_spec.replica_num == 0 and job_spec.job_num == 0:
        alias = spec.run_name or job_spec.job_name
    else:
        alias = job_spec.job_name
    jrd = sub.job_runtime_data
    working_dir = (jrd.working_dir if jrd else None) or job_spec.working_dir
    conf = spec.configuration
    ide_url = None
    scheme = (
        IDE_SCHEMES.get(str(conf.get("ide"))) if conf.get("type") == "dev-environment" else None
    )
    if scheme:
        path = working_dir if working_dir and working_dir.startswith("/") else "/"
        ide_url = f"{scheme}://vscode-remote/ssh-remote+{alias}{path}"
    return {
        "ssh_alias": alias,
        "ssh_command": f"ssh {alias}",
        "working_dir": working_dir,
        "ide_url": ide_url,
    }


def _service(spec: RunSpec, project_name: str) -> ServiceSpec | None:
    conf = spec.configuration
    if conf.get("type") != "service":
        return None
    model = conf.get("model")
    info = None
    if isinstance(model, dict) and model.get("name"):
        # The project's OpenAI-compatible entry point routes by model name (server/proxy).
        info = ServiceModelInfo(
            name=model["name"], base_url=f"/proxy/models/{project_name}/", type="chat"
        )
    return ServiceSpec(url=f"/proxy/services/{project_name}/{spec.run_name}/", model=info)
