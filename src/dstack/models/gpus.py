"""GPU groups: offers summarised per GPU (`dstack offer --group-by`, `gpus/list`)."""

from __future__ import annotations

from typing import Literal

from dstack.models.offers import InstanceAvailability
from dstack.models.wire import WireModel

# What the server groups by besides the GPU itself (always grouped by name, memory, vendor).
GroupBy = Literal["backend", "region", "count"]
GROUP_BY_VALUES: tuple[str, ...] = ("backend", "region", "count")


class CountRange(WireModel):
    min: int
    max: int


class PriceRange(WireModel):
    min: float
    max: float


class GpuGroup(WireModel):
    """Offers with the same GPU (and backend, region or count when grouped by them). `price`
    is per GPU: an 8-GPU machine at $32 is $4 here."""

    name: str
    memory_mib: int
    vendor: str
    availability: list[InstanceAvailability]
    spot: list[Literal["spot", "on-demand"]]
    count: CountRange
    price: PriceRange
    backends: list[str] | None = None
    backend: str | None = None
    regions: list[str] | None = None
    region: str | None = None
