"""Request bodies of the HTTP API (docs/api.md). Strict: an unknown or misspelt field is a
422 naming it, not a silently ignored typo."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dstack.models.gpus import GroupBy
from dstack.models.runs import ApplyRunPlanInput, RunSpec


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)  # built when first used


class GetRunPlanRequest(Request):
    run_spec: RunSpec
    max_offers: int | None = Field(default=None, ge=1, le=10000)


class ApplyRunPlanRequest(Request):
    plan: ApplyRunPlanInput
    force: bool = False


class GetRunRequest(Request):
    run_name: str | None = None
    id: str | None = None


class StopRunsRequest(Request):
    runs_names: list[str] = Field(min_length=1)
    abort: bool = False


class DeleteRunsRequest(Request):
    runs_names: list[str] = Field(min_length=1)


class ListRunsRequest(Request):
    project_name: str | None = None
    repo_id: str | None = None
    username: str | None = None
    only_active: bool = False
    include_jobs: bool = True
    job_submissions_limit: int | None = Field(default=None, ge=1, le=10)
    prev_submitted_at: datetime | None = None
    prev_run_id: str | None = None
    limit: int = Field(default=100, ge=1, le=100)
    ascending: bool = False


class GetFleetRequest(Request):
    name: str | None = None
    id: str | None = None


class GetFleetPlanRequest(Request):
    spec: dict[str, Any]  # FleetSpec: {configuration, configuration_path, profile}


class ApplyFleetPlanInput(Request):
    spec: dict[str, Any]
    current_resource: dict[str, Any] | None = None


class ApplyFleetPlanRequest(Request):
    plan: ApplyFleetPlanInput
    force: bool = False


class DeleteFleetsRequest(Request):
    names: list[str] = Field(min_length=1)


class DeleteFleetInstancesRequest(Request):
    name: str
    instance_nums: list[int] = Field(min_length=1)


class ListOffersRequest(Request):
    run_spec: RunSpec
    max_offers: int | None = Field(default=None, ge=1, le=10000)


class ListEventsRequest(Request):
    project_name: str | None = None
    target_type: str | None = None
    target_name: str | None = None
    within_run: str | None = None
    within_fleet: str | None = None
    since: datetime | None = None
    limit: int = Field(default=100, ge=1, le=1000)


class ListGpusRequest(Request):
    run_spec: RunSpec
    # Besides the GPU itself; `region` needs `backend` (the same region name in two clouds
    # is two places).
    group_by: list[GroupBy] | None = None


class GetVolumeRequest(Request):
    name: str


class CreateVolumeRequest(Request):
    configuration: dict[str, Any]  # a `type: volume` configuration


class DeleteVolumesRequest(Request):
    names: list[str] = Field(min_length=1)
    # Forget a directory volume whose machine is gone; end detaches stuck past the timeout.
    force: bool = False
