"""The base of the tests' `Compute` doubles (never presented as real backends): it lists no
offers, refuses to create hosts or open streams, and terminates nothing; each double overrides
what its test exercises. Import as `from compute_double import ComputeDouble` (tests/ is on
sys.path)."""

from __future__ import annotations

from typing import Any

from dstack.server.backends.base import Compute, Host, OfferRequirements, Provisioning


class ComputeDouble(Compute):
    async def offers(self, requirements: OfferRequirements) -> list[Any]:
        return []

    async def create_instance(self, host: Host, offer: Any) -> Provisioning:
        raise AssertionError("not used")

    async def terminate(self, host: Host) -> str | None:
        return None

    async def open_stream(self, host: Host, port: int) -> Any:
        raise AssertionError("not used")

    async def upstream(self, host: Host, port: int) -> tuple[str, int] | None:
        return None
