"""Priced offers from gpuhunt's catalog, kept in memory.

gpuhunt reads `{GPUHUNT_CATALOG_DIR}/{provider}.csv` on every query when that variable is set,
and otherwise downloads its catalog online. A plan may ask for offers many times a second, so
this module loads each provider's rows once (in a thread: parsing 10,000 CSV rows takes a
while), converts them to offers once, and answers later calls from memory with a list
comprehension. The local file is reloaded only when its mtime changes; the online catalog is
refreshed every `refresh_s` seconds, and a failed refresh keeps serving the previous rows.

A backend (the cloud computes) calls `shared_catalog().offers(provider, requirements, regions)`;
the offers it returns are shared between callers and must not be mutated (`model_copy` them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstack.models.instances import Disk, Gpu, InstanceType, Resources
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.server.backends.base import BackendError, OfferRequirements

log = logging.getLogger(__name__)

CATALOG_DIR_ENV = "GPUHUNT_CATALOG_DIR"
DEFAULT_DISK_GB = 100.0
REFRESH_S = 600.0
MIB_PER_GB = 1024


@dataclass(frozen=True)
class _Row:
    """One offer with the fields the filters read, unpacked for cheap comparisons."""

    spot: bool
    region: str
    price: float
    offer: InstanceOfferWithAvailability


@dataclass(frozen=True)
class _Loaded:
    rows: tuple[_Row, ...]
    # (path, mtime_ns) for a local file; the monotonic load time for the online catalog.
    stamp: Any


def to_resources(item: Any) -> Resources:
    gpus: list[Gpu] = []
    if item.gpu_count:
        vendor = getattr(item.gpu_vendor, "value", item.gpu_vendor) or "nvidia"
        gpu = Gpu(
            name=item.gpu_name or "",
            memory_mib=round((item.gpu_memory or 0) * MIB_PER_GB),
            vendor=vendor,
        )
        gpus = [gpu] * item.gpu_count
    disk_gb = item.disk_size if item.disk_size else DEFAULT_DISK_GB
    return Resources(
        cpus=item.cpu,
        memory_mib=round(item.memory * MIB_PER_GB),
        gpus=gpus,
        spot=item.spot,
        disk=Disk(size_mib=round(disk_gb * MIB_PER_GB)),
        cpu_arch=getattr(item.cpu_arch, "value", item.cpu_arch),
    )


def _shape(item: Any) -> tuple[Any, ...]:
    return (
        item.cpu, item.memory, item.gpu_count, item.gpu_name, item.gpu_memory,
        item.gpu_vendor, item.spot, item.disk_size, item.cpu_arch,
    )


def to_offer(
    provider: str, item: Any, shapes: dict[tuple[Any, ...], Resources] | None = None
) -> InstanceOfferWithAvailability:
    """A gpuhunt `CatalogItem` as an offer of `provider`. With `shapes`, offers of the same
    machine (one instance type in many regions) share one `Resources` object: less memory,
    and the scheduler checks each distinct machine once."""
    if shapes is None:
        resources = to_resources(item)
    else:
        key = _shape(item)
        if key not in shapes:
            shapes[key] = to_resources(item)
        resources = shapes[key]
    zones = (item.provider_data or {}).get("availability_zones")
    return InstanceOfferWithAvailability(
        backend=provider,
        instance=InstanceType(name=item.instance_name, resources=resources),
        region=item.location,
        availability_zones=[str(z) for z in zones] if isinstance(zones, list) and zones else None,
        price=item.price,
        availability=InstanceAvailability.UNKNOWN,
    )


def convert(provider: str, items: Iterable[Any], allowed_flags: frozenset[str]) -> tuple[_Row, ...]:
    """Offers cheapest first. A row with a flag not allowed is left out: gpuhunt flags rows
    that would break consumers which do not know what the flag means."""
    shapes: dict[tuple[Any, ...], Resources] = {}
    rows = [
        _Row(item.spot, item.location, item.price, to_offer(provider, item, shapes))
        for item in items
        if all(f in allowed_flags for f in item.flags)
    ]
    rows.sort(key=lambda r: r.price)
    return tuple(rows)


class OfferCatalog:
    """Each provider's catalog rows as offers, loaded once per process and filtered in memory.

    `catalog_dir`: where `{provider}.csv` files are; None reads `GPUHUNT_CATALOG_DIR` on each
    call (unset: the online catalog).
    """

    def __init__(
        self,
        catalog_dir: str | Path | None = None,
        *,
        refresh_s: float = REFRESH_S,
        allowed_flags: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dir = Path(catalog_dir) if catalog_dir is not None else None
        self._refresh_s = refresh_s
        self._flags = frozenset(allowed_flags)
        self._clock = clock
        self._loaded: dict[str, _Loaded] = {}
        self._lock = threading.Lock()
        self._online: Any = None  # gpuhunt.Catalog, created on first online use
        self.loads = 0  # how many times rows were (re)read: what the caching tests count

    def catalog_dir(self) -> Path | None:
        if self._dir is not None:
            return self._dir
        env = os.environ.get(CATALOG_DIR_ENV)
        return Path(env) if env else None

    async def offers(
        self,
        provider: str,
        req: OfferRequirements,
        regions: Sequence[str] | None = None,
    ) -> list[InstanceOfferWithAvailability]:
        """`provider`'s offers, cheapest first, filtered by `req` (spot, max price, regions)
        and by `regions` (the backend's configured regions; None: all)."""
        rows = (await self._rows(provider)).rows
        spot, max_price = req.spot, req.max_price
        wanted = _regions(req.regions, regions)
        return [
            r.offer
            for r in rows
            if (spot is None or r.spot == spot)
            and (max_price is None or r.price <= max_price)
            and (wanted is None or r.region in wanted)
        ]

    async def _rows(self, provider: str) -> _Loaded:
        directory = self.catalog_dir()
        cached = self._loaded.get(provider)
        if directory is not None:
            stamp = _file_stamp(directory / f"{provider}.csv")
            if cached is not None and cached.stamp == stamp:
                return cached
            return await asyncio.to_thread(self._load_file, provider, directory)
        if cached is not None and self._clock() - cached.stamp < self._refresh_s:
            return cached
        return await asyncio.to_thread(self._load_online, provider)

    def _load_file(self, provider: str, directory: Path) -> _Loaded:
        from gpuhunt._internal import storage

        path = directory / f"{provider}.csv"
        with self._lock:
            stamp = _file_stamp(path)
            cached = self._loaded.get(provider)
            if cached is not None and cached.stamp == stamp:
                return cached  # another caller loaded it while this one waited
            if stamp is None:
                raise BackendError(
                    f"no gpuhunt catalog for {provider}: {path} does not exist (set "
                    f"{CATALOG_DIR_ENV} to a directory of {{provider}}.csv files, or unset it "
                    "and give the server internet access)"
                )
            try:
                with open(path, encoding="utf-8", newline="") as f:
                    rows = convert(provider, storage.load(f, provider=provider), self._flags)
            except (OSError, ValueError, UnicodeDecodeError) as e:
                raise BackendError(f"cannot read the gpuhunt catalog {path}: {e}") from e
            loaded = _Loaded(rows, stamp)
            self._loaded[provider] = loaded
            self.loads += 1
            log.info("gpuhunt catalog %s: %d offers", path, len(rows))
            return loaded

    def _load_online(self, provider: str) -> _Loaded:
        import gpuhunt

        with self._lock:
            cached = self._loaded.get(provider)
            if cached is not None and self._clock() - cached.stamp < self._refresh_s:
                return cached
            if self._online is None:
                self._online = gpuhunt.Catalog(auto_reload=False)
            try:
                self._online.load()
                if provider not in self._online.catalog:
                    raise gpuhunt.GPUHuntError(f"the download of the {provider} catalog failed")
                items = self._online.query(provider=provider)
            except Exception as e:  # urllib, zip and gpuhunt errors alike
                if cached is not None:
                    log.warning("gpuhunt catalog refresh failed, keeping the last one: %s", e)
                    loaded = _Loaded(cached.rows, self._clock())
                    self._loaded[provider] = loaded
                    return loaded
                raise BackendError(
                    f"no gpuhunt catalog for {provider}: the online download failed ({e}); "
                    f"set {CATALOG_DIR_ENV} to a directory of {{provider}}.csv files, or give "
                    "the server internet access"
                ) from e
            loaded = _Loaded(convert(provider, items, self._flags), self._clock())
            self._loaded[provider] = loaded
            self.loads += 1
            return loaded


def _regions(a: Sequence[str] | None, b: Sequence[str] | None) -> frozenset[str] | None:
    """Both region limits at once (None or empty: no limit)."""
    a, b = a or None, b or None
    if a is None and b is None:
        return None
    if a is None or b is None:
        return frozenset(a or b or ())
    return frozenset(a) & frozenset(b)


def _file_stamp(path: Path) -> tuple[str, int, int] | None:
    """What says the file changed: its mtime, and its size for file systems with coarse
    timestamps."""
    try:
        st = path.stat()
        return (str(path), st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        return None


_shared: OfferCatalog | None = None
_shared_lock = threading.Lock()


def shared_catalog() -> OfferCatalog:
    """The process's one catalog: every backend shares its memory and its downloads."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = OfferCatalog()
        return _shared
