"""Offers: a place a job could run (an existing instance or capacity a backend can create)."""

from __future__ import annotations

from enum import Enum

from dstack.models.instances import InstanceType
from dstack.models.wire import WireModel


class InstanceAvailability(str, Enum):
    UNKNOWN = "unknown"
    AVAILABLE = "available"
    NOT_AVAILABLE = "not_available"
    NO_QUOTA = "no_quota"
    NO_BALANCE = "no_balance"
    IDLE = "idle"
    BUSY = "busy"

    def is_available(self) -> bool:
        return self in (
            InstanceAvailability.UNKNOWN,
            InstanceAvailability.AVAILABLE,
            InstanceAvailability.IDLE,
        )


class InstanceOfferWithAvailability(WireModel):
    backend: str
    instance: InstanceType
    region: str
    availability_zones: list[str] | None = None
    price: float
    availability: InstanceAvailability = InstanceAvailability.UNKNOWN
    instance_runtime: str = "runner"
    blocks: int = 1
    total_blocks: int = 1
    # Set when the offer is an existing instance of a fleet (the scheduler reuses it).
    instance_id: str | None = None
    fleet_name: str | None = None
