"""Fleets as the API returns them (`dstack fleet get --json`)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import Field

from dstack.models.instances import Instance
from dstack.models.wire import WireModel


class FleetStatus(str, Enum):
    SUBMITTED = "submitted"
    ACTIVE = "active"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"


class FleetSpec(WireModel):
    configuration: dict[str, Any]
    configuration_path: str | None = None
    profile: dict[str, Any] | None = None
    autocreated: bool = False


class Fleet(WireModel):
    id: str
    name: str
    project_name: str
    spec: FleetSpec
    created_at: datetime
    status: FleetStatus
    status_message: str | None = None
    # Counts the user's changes to the spec; a plan carries it so a stale apply is refused
    # (409). 0: not known (a client that predates it).
    generation: int = 0
    instances: list[Instance] = Field(default_factory=list)
