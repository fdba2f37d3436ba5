"""Instances (hosts that run jobs) and their resources, as the API returns them."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import Field

from dstack.models.wire import WireModel


class InstanceStatus(str, Enum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    IDLE = "idle"
    BUSY = "busy"
    TERMINATING = "terminating"
    TERMINATED = "terminated"

    def is_available(self) -> bool:
        return self in (InstanceStatus.IDLE, InstanceStatus.BUSY)

    def is_finished(self) -> bool:
        return self in (InstanceStatus.TERMINATING, InstanceStatus.TERMINATED)


class InstanceTerminationReason(str, Enum):
    TERMINATED_BY_USER = "terminated_by_user"
    IDLE_TIMEOUT = "idle_timeout"
    PROVISIONING_TIMEOUT = "provisioning_timeout"
    ERROR = "error"
    JOB_FINISHED = "job_finished"
    UNREACHABLE = "unreachable"
    NO_OFFERS = "no_offers"
    MASTER_FAILED = "master_failed"
    MAX_INSTANCES_LIMIT = "max_instances_limit"
    FLEET_SPEC_MISMATCH = "fleet_spec_mismatch"
    NO_BALANCE = "no_balance"


class Gpu(WireModel):
    name: str
    memory_mib: int
    vendor: str = "nvidia"


class Disk(WireModel):
    size_mib: int


class Resources(WireModel):
    cpus: int
    memory_mib: int
    gpus: list[Gpu] = Field(default_factory=list)
    spot: bool = False
    disk: Disk = Field(default_factory=lambda: Disk(size_mib=102400))
    cpu_arch: str | None = None
    description: str = ""


class InstanceType(WireModel):
    name: str
    resources: Resources


class Instance(WireModel):
    id: str
    project_name: str
    backend: str | None = None
    instance_type: InstanceType | None = None
    name: str
    fleet_id: str | None = None
    fleet_name: str | None = None
    instance_num: int = 0
    job_name: str | None = None
    hostname: str | None = None
    status: InstanceStatus
    unreachable: bool = False
    health_status: str = "healthy"
    termination_reason: str | None = None
    termination_reason_message: str | None = None
    created: datetime
    finished_at: datetime | None = None
    region: str | None = None
    availability_zone: str | None = None
    price: float | None = None
    total_blocks: int | None = 1
    busy_blocks: int = 0
    gpu_driver: str | None = None
