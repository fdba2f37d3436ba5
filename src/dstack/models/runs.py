"""Runs, jobs and their submissions as the API returns them (cli.md §23, server.md §3).

The status enums and termination reasons (`models/run_statuses.py`, re-exported here) are the
original's string values, so scripts that read `dstack ps --json` keep working.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from dstack.models.instances import InstanceType
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.models.run_statuses import (  # noqa: F401 - re-exported: their historic home
    JobStatus,
    JobTerminationReason,
    RetryEvent,
    RunStatus,
    RunTerminationReason,
)
from dstack.models.wire import WireModel


class JobProvisioningData(WireModel):
    backend: str
    base_backend: str | None = None
    instance_type: InstanceType
    instance_id: str
    hostname: str = ""
    internal_ip: str | None = None
    public_ip_enabled: bool = False
    instance_network: str | None = None
    region: str = ""
    availability_zone: str | None = None
    reservation: str | None = None
    price: float = 0.0
    username: str = "root"
    ssh_port: int = 22
    dockerized: bool = False
    ssh_proxy: dict[str, Any] | None = None
    backend_data: str | None = None
    gpu_driver: str | None = None


class JobRuntimeData(WireModel):
    network_mode: str = "host"
    gpu: int | None = None
    cpu: float | None = None
    memory: float | None = None
    ports: dict[int, int] | None = None
    volume_names: list[str] | None = None
    offer: InstanceOfferWithAvailability | None = None
    working_dir: str | None = None
    username: str | None = None
    # Why the job has no SSH server (the agent's words); while None and port 10022 is not in
    # `ports` yet, the job's SSH server is still starting.
    ssh_error: str | None = None


class JobSpec(WireModel):
    replica_num: int = 0
    job_num: int = 0
    job_name: str
    jobs_per_replica: int = 1
    replica_group: str = "0"
    app_specs: list[dict[str, Any]] = Field(default_factory=list)
    user: str | None = None
    commands: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    home_dir: str | None = None
    image_name: str | None = None
    privileged: bool = False
    # The process runtime's Python and CUDA compiler, found on the host (services/runtime_fields).
    python: str | None = None
    nvcc: bool = False
    single_branch: bool | None = None
    max_duration: int | None = None
    stop_duration: int | None = 300
    utilization_policy: dict[str, Any] | None = None
    registry_auth: dict[str, Any] | None = None
    requirements: dict[str, Any] = Field(default_factory=dict)
    retry: dict[str, Any] | None = None
    volumes: list[dict[str, Any]] | None = None
    ssh_key: str | None = None
    working_dir: str | None = None
    repo_data: dict[str, Any] | None = None
    repo_code_hash: str | None = None
    repo_dir: str | None = None
    repo_exists_action: str | None = None
    file_archives: list[dict[str, Any]] = Field(default_factory=list)
    service_port: int | None = None
    probes: list[dict[str, Any]] = Field(default_factory=list)
    node_group_index: int | None = None
    node_group_name: str | None = None
    node_group_job_index: int | None = None


class ImagePullProgress(WireModel):
    downloaded_bytes: int = 0
    extracted_bytes: int = 0
    total_bytes: int | None = None
    is_total_bytes_final: bool = False


class TriedOffer(WireModel):
    """An offer a job's new instance was created from and that failed before the job started
    (no capacity, or the backend's error): placement never picks the same one again."""

    backend: str
    region: str
    instance_type: str
    spot: bool = False
    price: float = 0.0
    message: str = ""

    def key(self) -> tuple[str, str, str, bool]:
        return (self.backend, self.region, self.instance_type, self.spot)

    def describe(self) -> str:
        """`aws us-east-1 p4d.24xlarge (spot, $12.3/h)`."""
        kind = "spot" if self.spot else "on-demand"
        return f"{self.backend} {self.region} {self.instance_type} ({kind}, ${self.price:g}/h)"


class JobSubmission(WireModel):
    id: str
    submission_num: int = 0
    deployment_num: int = 0
    submitted_at: datetime
    last_processed_at: datetime
    finished_at: datetime | None = None
    inactivity_secs: int | None = None
    status: JobStatus
    status_message: str = ""
    termination_reason: str | None = None
    termination_reason_message: str | None = None
    exit_status: int | None = None
    job_provisioning_data: JobProvisioningData | None = None
    job_runtime_data: JobRuntimeData | None = None
    error: str | None = None
    probes: list[dict[str, Any]] = Field(default_factory=list)
    image_pull_progress: ImagePullProgress | None = None
    # Offers tried one after another for this submission, oldest first (`dstack ps -v`).
    tried_offers: list[TriedOffer] = Field(default_factory=list)


class Job(WireModel):
    job_spec: JobSpec
    job_submissions: list[JobSubmission]
    job_connection_info: dict[str, Any] | None = None


class FileArchiveMapping(WireModel):
    id: str
    path: str


class RunSpec(WireModel):
    """What the CLI submits. `configuration` is the normalised configuration mapping (the
    server re-validates it with `parse_configuration`, so a hand-made API call gets the same
    errors as a file)."""

    run_name: str | None = None
    repo_id: str = "none"
    repo_data: dict[str, Any] = Field(default_factory=lambda: {"repo_type": "virtual"})
    repo_code_hash: str | None = None
    repo_dir: str | None = None
    file_archives: list[FileArchiveMapping] = Field(default_factory=list)
    working_dir: str | None = None
    configuration_path: str | None = None
    configuration: dict[str, Any]
    profile: dict[str, Any] | None = None
    ssh_key_pub: str | None = None


class RunFleetRef(WireModel):
    id: str
    name: str


class ServiceModelInfo(WireModel):
    name: str
    base_url: str
    type: str = "chat"


class ServiceSpec(WireModel):
    url: str
    model: ServiceModelInfo | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class Run(WireModel):
    id: str
    project_name: str
    user: str
    fleet: RunFleetRef | None = None
    submitted_at: datetime
    last_processed_at: datetime
    status: RunStatus
    status_message: str = ""
    termination_reason: str | None = None
    run_spec: RunSpec
    jobs: list[Job] = Field(default_factory=list)
    latest_job_submission: JobSubmission | None = None
    cost: float = 0.0
    service: ServiceSpec | None = None
    deployment_num: int = 0
    # Counts the user's changes to the spec; a plan carries it so a stale apply is refused
    # (409). 0: not known (a client that predates it).
    generation: int = 0
    error: str | None = None
    deleted: bool = False
    next_triggered_at: datetime | None = None


class JobPlan(WireModel):
    job_spec: JobSpec
    offers: list[InstanceOfferWithAvailability]
    total_offers: int
    max_price: float | None = None
    # No offers: why (backends not configured, hosts and offers and what each lacks).
    notes: list[str] = Field(default_factory=list)
    # Fields that have no effect on the offer the run would get.
    warnings: list[str] = Field(default_factory=list)


class RunPlan(WireModel):
    project_name: str
    user: str
    run_spec: RunSpec
    effective_run_spec: RunSpec | None = None
    job_plans: list[JobPlan]
    current_resource: Run | None = None
    action: str = "create"  # "create" or "update"


class ApplyRunPlanInput(WireModel):
    run_spec: RunSpec
    current_resource: Run | None = None
