"""A small gpuhunt catalog for tests, written with gpuhunt's own CSV writer so the server reads
it exactly as it reads a real one. Import as `from catalog_fixture import write_test_catalog`
(tests/ is on sys.path) and point the server at the directory with `GPUHUNT_CATALOG_DIR`."""

from __future__ import annotations

from pathlib import Path

from gpuhunt import AcceleratorVendor, CatalogItem, CPUArchitecture
from gpuhunt._internal.storage import dump

from compute_double import ComputeDouble
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.server.backends.base import (
    Capabilities,
    Host,
    OfferRequirements,
)
from dstack.server.backends.catalog import OfferCatalog

REGIONS = ("us-east-1", "us-west-2")
SPOT_DISCOUNT = 0.3  # a spot row costs this share of its on-demand price

# (instance type, cpus, memory GB, gpu name, gpu memory GB, gpu count, on-demand $/h)
TYPES: tuple[tuple[str, int, float, str | None, float | None, int, float], ...] = (
    ("t3.medium", 2, 4.0, None, None, 0, 0.0416),
    ("m5.large", 2, 8.0, None, None, 0, 0.096),
    ("g5.xlarge", 4, 16.0, "A10G", 24.0, 1, 1.006),
    ("p4d.24xlarge", 96, 1152.0, "A100", 40.0, 8, 32.7726),
    ("p5.48xlarge", 192, 2048.0, "H100", 80.0, 8, 98.32),
)

# Synthetic families for the large catalog: (prefix, gpu name, gpu memory GB, $/h per GPU).
FAMILIES = (
    ("c", None, None, 0.0),
    ("r", None, None, 0.0),
    ("g4dn", "T4", 16.0, 0.526),
    ("g5", "A10G", 24.0, 1.006),
    ("g6e", "L40S", 48.0, 1.861),
    ("p4de", "A100", 80.0, 5.12),
    ("p5", "H100", 80.0, 12.29),
)
SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96)


def _item(
    name: str,
    region: str,
    cpu: int,
    memory: float,
    gpu: str | None,
    gpu_memory: float | None,
    gpu_count: int,
    price: float,
    spot: bool,
) -> CatalogItem:
    return CatalogItem(
        provider="aws",
        instance_name=name,
        location=region,
        price=round(price * (SPOT_DISCOUNT if spot else 1.0), 5),
        cpu=cpu,
        memory=memory,
        gpu_count=gpu_count,
        gpu_name=gpu,
        gpu_memory=gpu_memory,
        spot=spot,
        disk_size=None,
        gpu_vendor=AcceleratorVendor.NVIDIA if gpu_count else None,
        cpu_arch=CPUArchitecture.X86,
    )


def known_items() -> list[CatalogItem]:
    """The five instance types, each on-demand and spot, in both regions (20 rows)."""
    return [
        _item(name, region, cpu, mem, gpu, gmem, count, price, spot)
        for name, cpu, mem, gpu, gmem, count, price in TYPES
        for region in REGIONS
        for spot in (False, True)
    ]


def synthetic_items(n: int) -> list[CatalogItem]:
    """`n` rows of made-up instance types (varied CPUs, memory, GPUs, regions, prices)."""
    regions = [
        f"{geo}-{side}-{k}"
        for geo in ("us", "eu", "ap")
        for side in ("east", "west")
        for k in (1, 2)
    ]
    out: list[CatalogItem] = []
    i = 0
    while len(out) < n:
        prefix, gpu, gmem, gpu_price = FAMILIES[i % len(FAMILIES)]
        size = SIZES[(i // len(FAMILIES)) % len(SIZES)]
        gen = i // (len(FAMILIES) * len(SIZES))
        count = 0 if gpu is None else min(8, max(1, size // 8))
        cpu = 2 * size
        price = 0.05 * cpu + gpu_price * count + 0.001 * (i % 97)
        name = f"{prefix}{gen}.{size}xlarge"
        region = regions[i % len(regions)]
        out.append(_item(name, region, cpu, 8.0 * size, gpu, gmem, count, price, i % 2 == 1))
        i += 1
    return out


def write_test_catalog(dir: Path, rows: int | None = None, *, provider: str = "aws") -> Path:
    """Write `{dir}/{provider}.csv` in gpuhunt's format and return its path. `rows=None`: the
    20 known rows (t3.medium, m5.large, g5.xlarge, p4d.24xlarge, p5.48xlarge; on-demand and
    spot; us-east-1 and us-west-2); `rows=N`: N synthetic rows instead."""
    dir.mkdir(parents=True, exist_ok=True)
    items = known_items() if rows is None else synthetic_items(rows)
    for item in items:
        item.provider = provider
    path = dir / f"{provider}.csv"
    dump(items, str(path))
    return path


class CatalogCompute(ComputeDouble):
    """A test double of a cloud backend that only lists offers, from `catalog` under its own
    `type` as the provider (`{type}.csv`); it creates nothing."""

    capabilities = Capabilities(spot=True)

    def __init__(self, kind: str, catalog: OfferCatalog, regions: list[str] | None = None):
        self.type = kind
        self.catalog = catalog
        self.regions = regions

    async def offers(self, requirements: OfferRequirements) -> list[InstanceOfferWithAvailability]:
        return await self.catalog.offers(self.type, requirements, self.regions)

    async def terminate(self, host: Host) -> str | None:
        raise AssertionError("a catalog-only test double creates nothing")
