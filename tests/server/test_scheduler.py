"""The pure scheduler: matching (filter) and placement (score, select)."""

from __future__ import annotations

from typing import Any

import pytest

from dstack.models.instances import Disk, Gpu, InstanceType, Resources
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.models.resources import ResourcesSpec
from dstack.server.scheduler.matching import mismatch, share
from dstack.server.scheduler.placement import (
    FleetCapacity,
    PoolInstance,
    Ranking,
    Requirements,
    no_capacity_message,
)
from dstack.server.scheduler.ranking import rank

GB = 1024


def res(
    cpus: int = 8,
    mem: int = 32,
    gpus: int = 0,
    gpu: str = "A100",
    gpu_mem: int = 80,
    vendor: str = "nvidia",
    spot: bool = False,
    disk: int = 1000,
    arch: str | None = None,
) -> Resources:
    return Resources(
        cpus=cpus,
        memory_mib=mem * GB,
        gpus=[Gpu(name=gpu, memory_mib=gpu_mem * GB, vendor=vendor) for _ in range(gpus)],
        spot=spot,
        disk=Disk(size_mib=disk * GB),
        cpu_arch=arch,
    )


def spec(**kw: Any) -> ResourcesSpec:
    return ResourcesSpec.model_validate(kw)


def offer(
    name: str = "t1",
    price: float = 1.0,
    *,
    backend: str = "aws",
    region: str = "us-east-1",
    availability: InstanceAvailability = InstanceAvailability.AVAILABLE,
    **kw: Any,
) -> InstanceOfferWithAvailability:
    return InstanceOfferWithAvailability(
        backend=backend,
        instance=InstanceType(name=name, resources=res(**kw)),
        region=region,
        price=price,
        availability=availability,
    )


def inst(
    id: str = "i1",
    *,
    fleet: str = "fleet",
    price: float = 4.0,
    status: str = "idle",
    blocks: int = 1,
    busy: int = 0,
    unreachable: bool = False,
    backend: str = "aws",
    region: str = "us-east-1",
    itype: str = "host",
    **kw: Any,
) -> PoolInstance:
    return PoolInstance(
        id=id,
        name=f"{fleet}-{id}",
        fleet_id=f"{fleet}-id",
        fleet_name=fleet,
        backend=backend,
        region=region,
        resources=res(**kw),
        instance_type=itype,
        price=price,
        status=status,
        total_blocks=blocks,
        busy_blocks=busy,
        unreachable=unreachable,
    )


def cap(*offers: InstanceOfferWithAvailability, fleet: str = "fleet") -> FleetCapacity:
    return FleetCapacity(f"{fleet}-id", fleet, tuple(offers))


def req(resources: dict[str, Any] | None = None, **kw: Any) -> Requirements:
    return Requirements(resources=spec(**(resources or {})), **kw)


# -- matching ---------------------------------------------------------------------------------

MISMATCH = [
    ("fits-defaults", {}, res(), None),
    ("fits-gpu", {"gpu": "A100:2", "memory": "16GB.."}, res(gpus=2), None),
    ("cpu-too-few", {"cpu": "16.."}, res(cpus=8), "cpu 16.. (has 8)"),
    ("cpu-too-many", {"cpu": "2..4"}, res(cpus=8), "cpu 2..4 (has 8)"),
    ("cpu-arch", {"cpu": "arm:4.."}, res(arch="x86"), "cpu arch arm != x86"),
    ("cpu-arch-unknown-host", {"cpu": "arm:4.."}, res(arch=None), None),
    ("memory", {"memory": "64GB.."}, res(mem=32), "memory 64GB.. (has 32GB)"),
    ("memory-range-max", {"memory": "8GB..16GB"}, res(mem=32), "memory 8GB..16GB (has 32GB)"),
    ("disk-too-small", {"disk": "2000GB.."}, res(disk=1000), "disk 2000GB.. (has 1000GB)"),
    ("disk-bigger-is-fine", {"disk": "100GB..200GB"}, res(disk=1000), None),
    ("gpu-count-none", {"gpu": "A100:2"}, res(gpus=0), "gpu count 2 (has 0)"),
    ("gpu-count-more", {"gpu": "A100:2"}, res(gpus=8), "gpu count 2 (has 8)"),
    ("gpu-name", {"gpu": "H100:2"}, res(gpus=2), "gpu name H100 (has A100)"),
    ("gpu-name-case", {"gpu": "a100:2"}, res(gpus=2), None),
    ("gpu-name-any-of", {"gpu": "H100,A100:2"}, res(gpus=2), None),
    ("gpu-vendor", {"gpu": "amd:1"}, res(gpus=1), "gpu vendor amd (has nvidia)"),
    ("gpu-memory", {"gpu": "96GB..:1"}, res(gpus=1, gpu_mem=80), "gpu memory 96GB.. (has 80GB)"),
    (
        "gpu-total-memory",
        {"gpu": {"count": "1..", "total_memory": "200GB.."}},
        res(gpus=2, gpu_mem=80),
        "gpu total memory 200GB.. (has 160GB)",
    ),
    ("no-gpu-wanted-any-count", {}, res(gpus=4), None),
    ("gpu-zero-wanted", {"gpu": 0}, res(gpus=1), "gpu count 0 (has 1)"),
]


@pytest.mark.parametrize(
    ("wanted", "host", "reason"), [m[1:] for m in MISMATCH], ids=[m[0] for m in MISMATCH]
)
def test_mismatch(wanted: dict[str, Any], host: Resources, reason: str | None) -> None:
    assert mismatch(spec(**wanted), host) == reason


def test_mismatch_without_spec() -> None:
    assert mismatch(None, res()) is None


def test_share_divides_cpus_memory_gpus() -> None:
    host = res(cpus=32, mem=256, gpus=8)
    one = share(host, 1, 4)
    assert (one.cpus, one.memory_mib, len(one.gpus)) == (8, 64 * GB, 2)
    three = share(host, 3, 4)
    assert (three.cpus, three.memory_mib, len(three.gpus)) == (24, 192 * GB, 6)
    assert share(host, 4, 4) is host


# -- placement: blocks -----------------------------------------------------------------------

BLOCK_HOST = dict(cpus=32, mem=256, gpus=8, disk=4000, blocks=4, price=8.0)


def test_two_gpu_job_takes_one_block_of_four() -> None:
    r = rank(req({"gpu": "A100:2", "memory": "16GB.."}), [inst(**BLOCK_HOST)], [])
    best = r.best
    assert best is not None
    assert (best.instance_id, best.blocks) == ("i1", 1)
    o = best.offer
    assert (o.blocks, o.total_blocks, o.availability) == (1, 4, InstanceAvailability.IDLE)
    assert (o.instance.resources.cpus, len(o.instance.resources.gpus)) == (8, 2)
    assert o.price == 8.0  # a share costs what the instance costs (server.md §4.4)
    assert o.instance_id == "i1" and o.fleet_name == "fleet"


def test_four_gpu_job_takes_two_blocks() -> None:
    best = rank(req({"gpu": "A100:4"}), [inst(**BLOCK_HOST)], []).best
    assert best is not None and best.blocks == 2


def test_last_free_block_is_still_offered() -> None:
    best = rank(req({"gpu": "A100:2"}), [inst(busy=3, status="busy", **BLOCK_HOST)], []).best
    assert best is not None
    assert (best.blocks, best.offer.availability) == (1, InstanceAvailability.IDLE)


def test_no_free_block_is_busy_not_best() -> None:
    r = rank(req({"gpu": "A100:2"}), [inst(busy=4, status="busy", **BLOCK_HOST)], [])
    assert [c.offer.availability for c in r.candidates] == [InstanceAvailability.BUSY]
    assert r.best is None


def test_too_few_free_blocks_for_a_bigger_share() -> None:
    r = rank(req({"gpu": "A100:4"}), [inst(busy=3, status="busy", **BLOCK_HOST)], [])
    assert r.best is None
    assert r.candidates[0].blocks == 2


def test_multinode_needs_the_whole_host() -> None:
    best = rank(req({"gpu": "A100:2.."}, multinode=True), [inst(**BLOCK_HOST)], []).best
    assert best is not None
    assert best.blocks == 4
    assert len(best.offer.instance.resources.gpus) == 8
    assert best.offer.price == 8.0


def test_multinode_refuses_a_partly_busy_host() -> None:
    r = rank(req({"gpu": "A100:2.."}, multinode=True), [inst(busy=1, **BLOCK_HOST)], [])
    assert r.best is None
    assert [(c.blocks, c.offer.availability) for c in r.candidates] == [
        (4, InstanceAvailability.BUSY)
    ]


def test_multinode_with_a_block_sized_requirement_is_refused() -> None:
    r = rank(req({"gpu": "A100:2"}, multinode=True), [inst(**BLOCK_HOST)], [])
    assert r.candidates == []
    assert r.rejections == ["fleet-i1: gpu count 2 (has 8)"]


def test_blocks_do_not_split_the_disk() -> None:
    host = dict(BLOCK_HOST, disk=100)
    best = rank(req({"gpu": "A100:2"}), [inst(**host)], []).best
    assert best is not None and best.blocks == 1


# -- placement: score ------------------------------------------------------------------------


def test_reuse_before_new_capacity_even_if_dearer() -> None:
    r = rank(req(), [inst(price=10.0)], [cap(offer("cheap", 0.5))])
    assert [(c.instance_id, c.offer.price) for c in r.candidates] == [("i1", 10.0), (None, 0.5)]
    assert r.best is not None and r.best.instance_id == "i1"


def test_busy_instance_falls_back_to_new_capacity() -> None:
    r = rank(req(), [inst(status="busy", busy=1)], [cap(offer("new", 3.0))])
    assert r.best is not None
    assert (r.best.instance_id, r.best.offer.instance.name) == (None, "new")


def test_cheaper_first() -> None:
    r = rank(req(), [], [cap(offer("b", 2.0), offer("a", 1.0), offer("c", 3.0))])
    assert [c.offer.instance.name for c in r.candidates] == ["a", "b", "c"]
    assert r.best is not None and r.best.blocks == 1 and r.best.fleet_name == "fleet"


def test_cheaper_idle_instance_first() -> None:
    r = rank(req(), [inst("i1", price=3.0), inst("i2", price=1.0)], [])
    assert [c.instance_id for c in r.candidates] == ["i2", "i1"]


def test_same_price_least_waste_first() -> None:
    r = rank(req(), [], [cap(offer("big", 1.0, cpus=64, mem=512), offer("small", 1.0))])
    assert [c.offer.instance.name for c in r.candidates] == ["small", "big"]


def test_unavailable_offers_last_and_never_best() -> None:
    gone = offer("gone", 0.1, availability=InstanceAvailability.NOT_AVAILABLE)
    quota = offer("quota", 0.2, availability=InstanceAvailability.NO_QUOTA)
    r = rank(req(), [], [cap(gone, quota, offer("ok", 5.0))])
    assert [c.offer.instance.name for c in r.candidates] == ["ok", "gone", "quota"]
    assert r.best is not None and r.best.offer.instance.name == "ok"
    only_gone = rank(req(), [], [cap(gone)])
    assert only_gone.best is None


# -- placement: filters ----------------------------------------------------------------------


def test_fleets_filter() -> None:
    pool = [inst("i1", fleet="a"), inst("i2", fleet="b")]
    capacity = [cap(offer("oa"), fleet="a"), cap(offer("ob"), fleet="b")]
    r = rank(req(fleets=("b",)), pool, capacity)
    assert [(c.fleet_name, c.instance_id) for c in r.candidates] == [("b", "i2"), ("b", None)]
    assert r.candidates[1].offer.instance.name == "ob"
    # An instance outside the run's `fleets` is named, so "fits no fleet" says why.
    assert r.rejections == ["a-i1: fleet a not in ['b']"]


def test_regions_without_docker_refuse_only_jobs_with_an_image() -> None:
    """A backend that runs images in some regions only (a Slurm cluster without `docker:
    true`): those offers are refused to a job with `image`, in the backend's words."""
    why = "cluster b runs the process runtime only"
    capacity = FleetCapacity(
        "fleet-id",
        "fleet",
        (offer("oa", region="a", backend="slurm"), offer("ob", region="b", backend="slurm")),
        no_docker={("slurm", "b"): why},
    )
    r = rank(req(docker=True), [], [capacity])
    assert [c.offer.region for c in r.candidates] == ["a"]
    assert r.rejections == [f"slurm offer ob: {why}"]
    plain = rank(req(), [], [capacity])
    assert sorted(c.offer.region for c in plain.candidates) == ["a", "b"]


@pytest.mark.parametrize(
    ("policy", "names", "rejected"),
    [
        ("spot", ["s"], ["aws offer od: spot_policy spot (instance is on-demand)"]),
        ("on-demand", ["od"], ["aws offer s: spot_policy on-demand (instance is spot)"]),
        ("auto", ["s", "od"], []),
    ],
)
def test_spot_policy(policy: str, names: list[str], rejected: list[str]) -> None:
    r = rank(req(spot_policy=policy), [], [cap(offer("s", 0.3, spot=True), offer("od", 1.0))])
    assert [c.offer.instance.name for c in r.candidates] == names
    assert r.rejections == rejected


def test_spot_policy_applies_to_pool_instances() -> None:
    r = rank(req(spot_policy="spot"), [inst(spot=False)], [])
    assert r.candidates == []
    assert r.rejections == ["fleet-i1: spot_policy spot (instance is on-demand)"]


def test_max_price() -> None:
    r = rank(req(max_price=1.5), [], [cap(offer("ok", 1.5), offer("dear", 2.0))])
    assert [c.offer.instance.name for c in r.candidates] == ["ok"]
    assert r.rejections == ["aws offer dear: price $2 > max_price $1.5"]


def test_max_price_on_pool_instance() -> None:
    r = rank(req(max_price=1.0), [inst(price=4.0)], [])
    assert r.rejections == ["fleet-i1: price $4 > max_price $1"]


@pytest.mark.parametrize(
    ("kw", "rejection"),
    [
        ({"backends": ("gcp",)}, "aws offer t1: backend aws not in ['gcp']"),
        ({"regions": ("eu-west-1",)}, "aws offer t1: region us-east-1 not in ['eu-west-1']"),
        ({"instance_types": ("p4d",)}, "aws offer t1: instance type t1 not in ['p4d']"),
    ],
)
def test_profile_filters(kw: dict[str, Any], rejection: str) -> None:
    r = rank(req(**kw), [], [cap(offer())])
    assert r.candidates == []
    assert r.rejections == [rejection]


def test_creation_policy_reuse_never_creates() -> None:
    r = rank(req(creation_policy="reuse"), [inst(status="busy", busy=1)], [cap(offer())])
    assert all(c.instance_id is not None for c in r.candidates)
    assert r.best is None


@pytest.mark.parametrize(
    ("kw", "rejection"),
    [
        ({"unreachable": True}, "fleet-i1: unreachable"),
        ({"status": "provisioning"}, "fleet-i1: provisioning"),
        ({"status": "pending"}, "fleet-i1: pending"),
    ],
)
def test_unusable_pool_instances(kw: dict[str, Any], rejection: str) -> None:
    r = rank(req(), [inst(**kw)], [])
    assert r.candidates == []
    assert r.rejections == [rejection]


def test_resources_rejection_names_the_requirement() -> None:
    r = rank(req({"gpu": "A100:2"}), [inst(gpus=0)], [cap(offer("cpu-only"))])
    assert r.rejections == [
        "fleet-i1: gpu count 2 (has 0)",
        "aws offer cpu-only: gpu count 2 (has 0)",
    ]


# -- the no-capacity message -----------------------------------------------------------------


def test_no_capacity_message_without_fleets() -> None:
    assert no_capacity_message(Ranking(), has_fleets=False) == (
        "No matching fleet found: the project has no fleets. Create one with `dstack apply`."
    )


def test_no_capacity_message_everything_busy() -> None:
    r = rank(req(), [inst(status="busy", busy=1)], [])
    assert no_capacity_message(r, has_fleets=True) == (
        "No matching instance: every fleet is at its maximum size and fully busy."
    )


def test_no_capacity_message_names_the_unmet_requirement() -> None:
    r = rank(req({"gpu": "H100:8"}), [inst(gpus=2)], [cap(offer("small", gpus=1))])
    assert r.best is None
    assert no_capacity_message(r, has_fleets=True) == (
        "No instance or offer meets the requirements: fleet-i1: gpu count 8 (has 2); "
        "aws offer small: gpu count 8 (has 1)"
    )


def test_no_capacity_message_shows_five_reasons() -> None:
    offers = [offer(f"o{i}") for i in range(7)]
    r = rank(req({"memory": "64GB.."}), [], [cap(*offers)])
    msg = no_capacity_message(r, has_fleets=True)
    assert msg.count("memory 64GB.. (has 32GB)") == 5
    assert "o4" in msg and "o5" not in msg


def test_only_busy_means_the_job_queues() -> None:
    if not hasattr(Ranking, "only_busy"):
        pytest.skip("Ranking has no `only_busy` in this tree")
    busy = rank(req(), [inst(status="busy", busy=1)], [])
    assert busy.only_busy is True
    free = rank(req(), [inst()], [])
    assert free.only_busy is False
    nothing = rank(req({"gpu": "A100:8"}), [inst()], [])
    assert nothing.only_busy is False


# -- the local backend: process jobs share the instance (docs/architecture.md) ---------------


def _shared(**kw: Any) -> PoolInstance:
    from dataclasses import replace

    return replace(inst(**kw), shared=True)


def test_non_exclusive_job_shares_a_busy_shared_instance_without_blocks() -> None:
    r = rank(req(exclusive=False), [_shared(status="busy", busy=1)], [])
    assert r.best is not None and r.best.blocks == 0 and r.best.instance_id == "i1"
    # The whole host counts for matching, even with several blocks.
    r = rank(req({"cpu": "8.."}, exclusive=False), [_shared(blocks=4, cpus=8)], [])
    assert r.best is not None and r.best.blocks == 0


def test_exclusive_job_still_queues_on_a_busy_shared_instance() -> None:
    r = rank(req(), [_shared(status="busy", busy=1)], [])
    assert r.best is None and r.only_busy


@pytest.mark.parametrize("status", ["pending", "provisioning"])
def test_non_exclusive_job_waits_for_a_shared_instance_being_created(status: str) -> None:
    r = rank(req(exclusive=False), [_shared(status=status)], [])
    assert r.best is None and r.only_busy  # queued, not failed for lack of capacity
