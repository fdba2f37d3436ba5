"""The compute interface as the server uses it, without I/O: the offer cache, which backends a
project may get capacity from, the sweeper's idea of an orphan, and the Docker filter."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from compute_double import ComputeDouble
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.server.backends.base import (
    Capabilities,
    InventoryItem,
    OfferCache,
    OfferRequirements,
)
from dstack.server.backends.local import LocalBackend
from dstack.server.backends.registry import BackendRegistry
from dstack.server.reconcilers.sweeper import orphans
from dstack.server.scheduler.ranking import rank
from dstack.server.services.pool import PoolRows, unavailable, with_capacity

from .test_scheduler import cap, inst, offer, req


class Counting(ComputeDouble):
    """A backend that counts its catalog calls (an emulator of a slow cloud API)."""

    type = "fake"
    offers_ttl = 10.0

    def __init__(self, fail: bool = False, **caps: Any) -> None:
        self.calls = 0
        self.fail = fail
        self.capabilities = Capabilities(**caps)

    async def offers(self, requirements: OfferRequirements) -> list[InstanceOfferWithAvailability]:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("catalog down")
        return [offer(backend=self.type)]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_offer_cache_makes_one_call_for_a_burst_and_one_per_ttl() -> None:
    clock = Clock()
    cache = OfferCache(clock)
    backend = Counting()

    async def burst() -> list[list[Any]]:
        return await asyncio.gather(*(cache.get(backend, OfferRequirements()) for _ in range(20)))

    results = asyncio.run(burst())
    assert backend.calls == 1 and all(len(r) == 1 for r in results)
    clock.t = 9.9
    asyncio.run(cache.get(backend, OfferRequirements()))
    assert backend.calls == 1  # still fresh
    asyncio.run(cache.get(backend, OfferRequirements(spot=True)))
    assert backend.calls == 2  # other requirements, other key
    clock.t = 10.1
    asyncio.run(cache.get(backend, OfferRequirements()))
    assert backend.calls == 3  # expired


def test_offer_cache_does_not_keep_failures() -> None:
    cache = OfferCache(Clock())
    backend = Counting(fail=True)

    async def burst() -> list[Any]:
        return await asyncio.gather(
            *(cache.get(backend, OfferRequirements()) for _ in range(5)), return_exceptions=True
        )

    errors = asyncio.run(burst())
    assert backend.calls == 1 and all(isinstance(e, RuntimeError) for e in errors)
    backend.fail = False
    assert asyncio.run(cache.get(backend, OfferRequirements()))
    assert backend.calls == 2


def rows(project: str, live: set[str] | None = None, fleets: Any = None) -> PoolRows:
    return PoolRows(
        project_name=project,
        fleets=fleets or [("f-id", "anything", {"type": "fleet", "name": "anything"})],
        instances=[],
        counts={},
        live_backends=live or set(),
    )


def test_the_servers_own_machine_serves_one_project_only(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path, "main")
    assert unavailable(local, rows("main")) is None
    why = unavailable(local, rows("team"))
    assert why and "serves only project main" in why
    assert "already has its one instance" in (unavailable(local, rows("main", {"local"})) or "")
    hosts_only = Counting(creates_instances=False)
    assert "only runs on hosts a fleet lists" in (unavailable(hosts_only, rows("team")) or "")


def test_a_fleet_open_to_any_backend_gets_no_capacity_from_a_backend_that_refuses_it(
    tmp_path: Path,
) -> None:
    local = LocalBackend(tmp_path, "main")
    local._offer = offer(backend="local")  # this machine, without probing it
    other = Counting()
    ctx = SimpleNamespace(backends=BackendRegistry([local, other]), offer_cache=OfferCache())
    team = asyncio.run(with_capacity(ctx, rows("team")))  # type: ignore[arg-type]
    assert [o.backend for o in team.capacity[0].offers] == ["fake"]
    assert any("backend local serves only project main" in n for n in team.notes), team.notes
    main = asyncio.run(with_capacity(ctx, rows("main")))  # type: ignore[arg-type]
    assert sorted(o.backend for o in main.capacity[0].offers) == ["fake", "local"]
    # A fleet that names its backends only gets those.
    named = [("f-id", "named", {"backends": ["fake"]})]
    only = asyncio.run(with_capacity(ctx, rows("main", fleets=named)))  # type: ignore[arg-type]
    assert [o.backend for o in only.capacity[0].offers] == ["fake"]


@pytest.mark.parametrize(
    ("rows_by_id", "swept"),
    [
        ({}, ["a"]),  # no row at all: a leak from a crash before the row was written
        ({"a": ("terminated", "p", True)}, ["a"]),
        ({"a": ("terminating", "p", False)}, []),  # its reconciler is still cleaning up
        ({"a": ("provisioning", "p", False)}, []),
        ({"a": ("idle", "p", False)}, []),
    ],
)
def test_an_orphan_is_a_tagged_item_no_live_row_owns(
    rows_by_id: dict[str, tuple[str, str, bool]], swept: list[str]
) -> None:
    items = [InventoryItem("a", "vm a"), InventoryItem(None, "untagged, never touched")]
    assert [i.instance_id for i in orphans(items, rows_by_id)] == swept


def test_a_job_with_an_image_skips_hosts_and_backends_without_docker() -> None:
    no_docker = replace(inst("nd"), docker=False)
    ranked = rank(req(docker=True), [no_docker, inst("ok")], [])
    assert [c.instance_id for c in ranked.candidates] == ["ok"]
    assert any("no Docker engine" in r for r in ranked.rejections)
    capacity = replace(cap(offer()), docker=False)
    ranked = rank(req(docker=True), [], [capacity])
    assert ranked.candidates == [] and "no Docker engine" in ranked.rejections[0]
    # A job without an image runs as processes: Docker does not matter.
    assert rank(req(), [no_docker], [capacity]).candidates


def test_a_field_the_backend_cannot_honour_is_refused_naming_it() -> None:
    local_caps = LocalBackend(Path("/nonexistent"), "main").capabilities.names()
    assert "volumes" not in local_caps and "shared_host" in local_caps
    host = replace(inst("h", backend="local"), capabilities=local_caps)
    ranked = rank(req(needs=frozenset({"volumes"})), [host], [])
    assert ranked.candidates == []
    assert ranked.rejections == ["fleet-h: backend local cannot mount `volumes`"]
    capacity = replace(cap(offer(backend="local")), capabilities={"local": local_caps})
    ranked = rank(req(needs=frozenset({"reservations"})), [], [capacity])
    assert ranked.rejections == ["local offer t1: backend local cannot use a `reservation`"]
    # Capabilities it has, or none asked for: placed as before.
    assert rank(req(needs=frozenset({"shared_host"})), [host], []).candidates
    assert rank(req(), [host], [capacity]).candidates


def test_needs_come_from_the_configuration() -> None:
    from dstack.server.services.pool import needs

    # Volumes restrict placement by where each volume is (scheduler), not by a capability.
    conf = SimpleNamespace(volumes=[{"name": "data", "path": "/data"}])
    assert needs(conf, {}) == frozenset()
    assert needs(SimpleNamespace(volumes=[]), {"reservation": "r-1", "spot": "spot"}) == {
        "reservations",
        "spot",
    }
    assert needs(SimpleNamespace(), {"spot": "auto"}) == frozenset()
    # `nodes: 2` needs a backend that runs multi-node tasks (Slurm here does not yet).
    assert needs(SimpleNamespace(), {"multinode": True}) == {"multinode"}


def test_a_multinode_task_is_refused_on_a_backend_without_multinode() -> None:
    capacity = replace(cap(offer(backend="slurm")), capabilities={"slurm": frozenset()})
    ranked = rank(req(needs=frozenset({"multinode"})), [], [capacity])
    assert ranked.candidates == []
    assert ranked.rejections == [
        "slurm offer t1: backend slurm cannot run a multi-node task (`nodes` > 1)"
    ]
