"""What every service and reconciler of one server process shares."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from dstack.server.backends.registry import BackendRegistry
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
    # This server process among the replicas on one database: lease owners and stats writers
    # carry it, so an operator (or a test) sees which process holds what.
    instance_id: str = field(default_factory=lambda: f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    # Backends (backends.base.Compute) by project and the type an instance row records; filled
    # at start by backends.create_backends. Services and reconcilers read them only through
    # the compute interface (services/hosts.py), never by name.
    backends: BackendRegistry = field(default_factory=BackendRegistry)
    # Offers per backend, cached for each backend's offers_ttl (backends.base.OfferCache).
    offer_cache: Any = None
