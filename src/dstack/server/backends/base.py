"""The interface every backend implements.

A backend offers capacity and creates and terminates instances. `create_instance` is keyed by
the instance id the server already wrote, so calling it twice after a crash finds the first
result instead of creating a second host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from dstack.models.offers import InstanceOfferWithAvailability


@dataclass
class ProvisionedInstance:
    """What the server needs to talk to a new instance's agent."""

    agent_url: str
    agent_token: str
    hostname: str
    host_info: dict[str, Any] = field(default_factory=dict)
    agent_pid: int | None = None


class BackendError(Exception):
    """A backend call failed; the message is shown to the user as the instance's reason."""


class Backend(ABC):
    type: str

    @abstractmethod
    async def offers(self) -> list[InstanceOfferWithAvailability]:
        """Capacity this backend could create now, cheapest first."""

    @abstractmethod
    async def create_instance(
        self, instance_id: str, offer: InstanceOfferWithAvailability
    ) -> ProvisionedInstance:
        """Create (or find, if it already exists) the instance for `instance_id`."""

    @abstractmethod
    async def terminate_instance(self, instance_id: str, agent_pid: int | None) -> None:
        """Destroy the instance; succeeds if it is already gone."""
