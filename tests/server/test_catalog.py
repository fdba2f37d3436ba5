"""The gpuhunt catalog as offers: conversion, filters, one load per file version, errors that
say where the catalog was looked for, and the online catalog's refresh."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import gpuhunt
import pytest
from gpuhunt._internal.storage import dump

from catalog_fixture import known_items, write_test_catalog
from dstack.server.backends.base import BackendError, OfferRequirements
from dstack.server.backends.catalog import OfferCatalog, shared_catalog


def offers(cat: OfferCatalog, req: OfferRequirements | None = None, **kw: Any) -> list[Any]:
    return asyncio.run(cat.offers("aws", req or OfferRequirements(), **kw))


def test_rows_become_offers_cheapest_first(tmp_path: Path) -> None:
    write_test_catalog(tmp_path)
    got = offers(OfferCatalog(tmp_path))
    assert len(got) == 20
    assert [o.price for o in got] == sorted(o.price for o in got)
    p4d = next(o for o in got if o.instance.name == "p4d.24xlarge" and o.price > 30)
    res = p4d.instance.resources
    assert (p4d.backend, p4d.price, p4d.availability.value) == ("aws", 32.7726, "unknown")
    assert (res.cpus, res.memory_mib, res.cpu_arch) == (96, 1152 * 1024, "x86")
    assert [(g.name, g.memory_mib, g.vendor) for g in res.gpus] == [("A100", 40960, "nvidia")] * 8
    assert res.disk.size_mib == 100 * 1024  # the catalog has no disk size: 100GB
    t3 = next(o for o in got if o.instance.name == "t3.medium")
    assert t3.instance.resources.gpus == [] and t3.instance.resources.spot is True


def test_filters_spot_price_and_both_region_limits(tmp_path: Path) -> None:
    write_test_catalog(tmp_path)
    cat = OfferCatalog(tmp_path)
    spot = offers(cat, OfferRequirements(spot=True))
    assert len(spot) == 10 and all(o.instance.resources.spot for o in spot)
    on_demand = offers(cat, OfferRequirements(spot=False))
    assert len(on_demand) == 10 and not any(o.instance.resources.spot for o in on_demand)
    cheap = offers(cat, OfferRequirements(max_price=1.006))
    assert {o.instance.name for o in cheap} == {"t3.medium", "m5.large", "g5.xlarge"}
    assert max(o.price for o in cheap) == 1.006  # the limit itself is allowed
    west = offers(cat, OfferRequirements(regions=("us-west-2",)))
    assert len(west) == 10 and {o.region for o in west} == {"us-west-2"}
    configured = offers(cat, regions=["us-east-1"])
    assert {o.region for o in configured} == {"us-east-1"}
    assert offers(cat, OfferRequirements(regions=("us-west-2",)), regions=["us-east-1"]) == []
    assert len(offers(cat, regions=[])) == 20  # an empty list is no limit


def test_loads_once_and_again_only_when_the_file_changes(tmp_path: Path) -> None:
    path = write_test_catalog(tmp_path)
    cat = OfferCatalog(tmp_path)

    async def burst() -> list[list[Any]]:
        return await asyncio.gather(*(cat.offers("aws", OfferRequirements()) for _ in range(10)))

    assert all(len(r) == 20 for r in asyncio.run(burst()))
    offers(cat, OfferRequirements(spot=True))
    assert cat.loads == 1
    dump(known_items()[:4], str(path))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert len(offers(cat)) == 4
    assert cat.loads == 2
    offers(cat)
    assert cat.loads == 2


def test_a_missing_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as e:
        offers(OfferCatalog(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "aws.csv") in msg and "does not exist" in msg
    assert "GPUHUNT_CATALOG_DIR" in msg


def test_the_directory_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_test_catalog(tmp_path, 30)
    monkeypatch.setenv("GPUHUNT_CATALOG_DIR", str(tmp_path))
    assert len(offers(OfferCatalog())) == 30
    assert shared_catalog() is shared_catalog()


def test_flagged_rows_and_availability_zones(tmp_path: Path) -> None:
    items = known_items()[:2]
    items[0].flags = ["future-feature"]
    items[1].provider_data = {"availability_zones": ["us-east-1a", "us-east-1b"]}
    dump(items, str(tmp_path / "aws.csv"))
    got = offers(OfferCatalog(tmp_path))
    assert len(got) == 1 and got[0].availability_zones == ["us-east-1a", "us-east-1b"]
    assert len(offers(OfferCatalog(tmp_path, allowed_flags=["future-feature"]))) == 2


class FakeOnline:
    """gpuhunt.Catalog without the network: `fail` makes the next load raise."""

    fail = False
    loads = 0

    def __init__(self, auto_reload: bool = True) -> None:
        assert auto_reload is False  # the server decides when to download
        self.catalog: dict[str, Any] = {}

    def load(self) -> None:
        FakeOnline.loads += 1
        if FakeOnline.fail:
            raise gpuhunt.GPUHuntError("Failed to load catalogs of all providers")
        self.catalog["aws"] = object()

    def query(self, provider: str) -> list[Any]:
        return [i for i in known_items() if i.provider == provider]


def test_online_catalog_refreshes_and_keeps_the_last_on_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GPUHUNT_CATALOG_DIR", raising=False)
    monkeypatch.setattr(gpuhunt, "Catalog", FakeOnline)
    monkeypatch.setattr(FakeOnline, "loads", 0)
    now = [0.0]
    cat = OfferCatalog(clock=lambda: now[0], refresh_s=600)
    assert len(offers(cat)) == 20 and FakeOnline.loads == 1
    now[0] = 599
    offers(cat)
    assert FakeOnline.loads == 1
    now[0] = 601
    monkeypatch.setattr(FakeOnline, "fail", True)
    assert len(offers(cat)) == 20 and FakeOnline.loads == 2  # the last download still serves
    now[0] = 700
    offers(cat)
    assert FakeOnline.loads == 2  # and the failed refresh is not retried on every call


def test_online_catalog_that_never_loaded_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUHUNT_CATALOG_DIR", raising=False)
    monkeypatch.setattr(gpuhunt, "Catalog", FakeOnline)
    monkeypatch.setattr(FakeOnline, "fail", True)
    with pytest.raises(BackendError) as e:
        offers(OfferCatalog())
    assert "online download failed" in str(e.value) and "GPUHUNT_CATALOG_DIR" in str(e.value)



def test_offers_of_one_machine_share_their_resources(tmp_path: Path) -> None:
    write_test_catalog(tmp_path)
    got = offers(OfferCatalog(tmp_path))
    # 5 instance types x (spot, on-demand): the scheduler checks 10 machines, not 20 offers.
    assert len({id(o.instance.resources) for o in got}) == 10
