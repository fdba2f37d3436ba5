"""Runs from `runs/list` as plain objects with the attributes `cli/render/runs.py` reads.

Why not the pydantic `Run`: importing pydantic and building the run models' schemas costs
~0.15 s of CPU, more than `dstack ps` may take in all (issue 16). These classes read the same
JSON, fill the same defaults as the models for the fields they keep, turn statuses into the
same enums and times into datetimes; a missing required field or a value of the wrong kind is
the same "Unexpected answer from the server" error the models give.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dstack.errors import ClientError
from dstack.models.run_statuses import JobStatus, RunStatus


def parse_run_views(raw: Any) -> list[RunView]:
    try:
        return [RunView(item) for item in _list(raw)]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ClientError(f"Unexpected answer from the server: {type(e).__name__}: {e}") from e


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a date-time string, got {value!r}")
    if value.endswith(("Z", "z")):  # Python 3.10's fromisoformat does not take the suffix
        value = value[:-1] + "+00:00"
    return datetime.fromisoformat(value)


def _opt(cls: type, value: Any) -> Any:
    return None if value is None else cls(value)


class GpuView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.name: str = d["name"]
        self.memory_mib: int = d["memory_mib"]


class DiskView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.size_mib: int = d["size_mib"]


class ResourcesView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.cpus: int = d["cpus"]
        self.memory_mib: int = d["memory_mib"]
        self.gpus = [GpuView(g) for g in _list(d.get("gpus", []))]
        self.spot: bool = d.get("spot", False)
        disk = d.get("disk")
        self.disk = DiskView(disk) if disk is not None else DiskView({"size_mib": 102400})
        self.cpu_arch: str | None = d.get("cpu_arch")


class InstanceTypeView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.name: str = d["name"]
        self.resources = ResourcesView(d["resources"])


class ProvisioningView:
    """`JobProvisioningData`: where the job runs and at what price."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.backend: str = d["backend"]
        self.instance_type = InstanceTypeView(d["instance_type"])
        self.region: str = d.get("region", "")
        self.reservation: str | None = d.get("reservation")
        self.price: float = d.get("price", 0.0)


class OfferView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.instance = InstanceTypeView(d["instance"])
        self.blocks: int = d.get("blocks", 1)
        self.total_blocks: int = d.get("total_blocks", 1)


class RuntimeView:
    """`JobRuntimeData`: the share of the instance the job got."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.offer = _opt(OfferView, d.get("offer"))


class TriedOfferView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.backend: str = d["backend"]
        self.region: str = d["region"]
        self.instance_type: str = d["instance_type"]
        self.spot: bool = d.get("spot", False)
        self.price: float = d.get("price", 0.0)
        self.message: str = d.get("message", "")


class SubmissionView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.deployment_num: int = d.get("deployment_num", 0)
        self.submitted_at = _time(d["submitted_at"])
        self.status = JobStatus(d["status"])
        self.status_message: str = d.get("status_message", "")
        self.termination_reason: str | None = d.get("termination_reason")
        self.termination_reason_message: str | None = d.get("termination_reason_message")
        self.job_provisioning_data = _opt(ProvisioningView, d.get("job_provisioning_data"))
        self.job_runtime_data = _opt(RuntimeView, d.get("job_runtime_data"))
        self.error: str | None = d.get("error")
        self.probes: list[dict[str, Any]] = _list(d.get("probes", []))
        self.tried_offers = [TriedOfferView(o) for o in _list(d.get("tried_offers", []))]


class JobSpecView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.replica_num: int = d.get("replica_num", 0)
        self.job_num: int = d.get("job_num", 0)
        self.jobs_per_replica: int = d.get("jobs_per_replica", 1)
        self.probes: list[dict[str, Any]] = _list(d.get("probes", []))


class JobView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.job_spec = JobSpecView(d["job_spec"])
        self.job_submissions = [SubmissionView(s) for s in _list(d["job_submissions"])]


class RunSpecView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.run_name: str | None = d.get("run_name")
        self.configuration: dict[str, Any] = d["configuration"]
        if not isinstance(self.configuration, dict):
            raise TypeError("run_spec.configuration is not a mapping")


class RunView:
    def __init__(self, d: dict[str, Any]) -> None:
        self.run_spec = RunSpecView(d["run_spec"])
        self.submitted_at = _time(d["submitted_at"])
        self.status = RunStatus(d["status"])
        self.status_message: str = d.get("status_message", "")
        self.error: str | None = d.get("error")
        self.jobs = [JobView(j) for j in _list(d.get("jobs", []))]
        self.latest_job_submission = _opt(SubmissionView, d.get("latest_job_submission"))
        self.deployment_num: int = d.get("deployment_num", 0)
        self.next_triggered_at = _time(d.get("next_triggered_at"))
