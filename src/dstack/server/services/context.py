"""What every service and reconciler of one server process shares."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from dstack.server.db.session import Database
from dstack.server.services.crypto import Box
from dstack.server.services.hub import Hub
from dstack.server.settings import Settings


@dataclass
class ServerContext:
    settings: Settings
    db: Database
    box: Box
    hub: Hub = field(default_factory=Hub)
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    # Backends by type (`local`, later `ssh`, clouds); reconcilers look them up here.
    backends: dict[str, Any] = field(default_factory=dict)
    # Backend type -> async (instance row, host port) -> (reader, writer): how the SSH relay
    # (services/job_ssh.py) reaches a port on a job's host; registered in app.py.
    stream_openers: dict[str, Any] = field(default_factory=dict)
