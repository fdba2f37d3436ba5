"""Volumes and gateways as the API lists them (network storage and service ingress)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from dstack.models.wire import WireModel


class VolumeStatus(str, Enum):
    SUBMITTED = "submitted"  # a network volume not created (or registered) yet
    PROVISIONING = "provisioning"  # unused, as in the reference; kept for the API's shape
    ACTIVE = "active"  # usable: mounted by runs
    FAILED = "failed"  # creation failed; `status_message` says why

    def is_finished(self) -> bool:
        return self == VolumeStatus.FAILED


class AttachmentStatus(str, Enum):
    ATTACHING = "attaching"
    ATTACHED = "attached"
    DETACHING = "detaching"
    DETACHED = "detached"


class Volume(WireModel):
    id: str
    name: str
    project_name: str
    user: str | None = None
    configuration: dict[str, Any]
    external: bool = False
    created_at: datetime
    status: str
    status_message: str | None = None
    deleted: bool = False
    # Deletion was asked for; the volume goes once nothing has it attached.
    to_be_deleted: bool = False
    # Counts the user's changes to the spec; a plan carries it so a stale apply is refused
    # (409). 0: not known (a client that predates it).
    generation: int = 0
    volume_id: str | None = None
    provisioning_data: dict[str, Any] | None = None
    attachments: list[dict[str, Any]] | None = None


class Gateway(WireModel):
    name: str
    configuration: dict[str, Any]
    created_at: datetime
    status: str
    status_message: str | None = None
    hostname: str | None = None
    ip_address: str | None = None
    instance_id: str | None = None
    wildcard_domain: str | None = None
    default: bool = False
    backend: str | None = None
    region: str | None = None
