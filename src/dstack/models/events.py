"""Events: the audit trail every state change leaves (`dstack event`, `ps -v`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from dstack.models.wire import WireModel


class EventTarget(WireModel):
    type: str  # project user fleet instance run job volume gateway secret
    project_name: str | None = None
    id: str
    name: str


class Event(WireModel):
    id: str
    message: str
    recorded_at: datetime
    actor_user: str | None = None
    targets: list[EventTarget] = Field(default_factory=list)
