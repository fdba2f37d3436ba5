"""The scheduler's volume location filters (pure): a network volume keeps the job in its
backend, region and zone; a directory volume on its fleet and, once bound, its machine; a
volume another instance holds makes the job queue (busy), never fail."""

from __future__ import annotations

from dataclasses import replace

from dstack.server.scheduler.placement import VolumeLocation
from dstack.server.scheduler.ranking import rank

from .test_scheduler import cap, inst, offer, req

EBS = VolumeLocation(
    "v1", "data", backend="aws", region="us-east-1", availability_zone="us-east-1a"
)


def test_network_volume_keeps_offers_and_instances_in_its_backend_region_and_zone() -> None:
    here = replace(inst("i1"), availability_zone="us-east-1a")
    other_zone = replace(inst("i2"), availability_zone="us-east-1b")
    other_region = inst("i3", region="eu-west-1")
    ranking = rank(
        req(volumes=((EBS,),)),
        [here, other_zone, other_region],
        [cap(offer("t-east"), offer("t-eu", region="eu-west-1"))],
    )
    assert [c.instance_id for c in ranking.candidates] == ["i1", None]
    assert ranking.candidates[0].volumes == ("v1",)
    assert ranking.candidates[1].offer.instance.name == "t-east"
    assert "fleet-i2: volume data is in aws us-east-1a" in ranking.rejections
    assert "fleet-i3: volume data is in aws us-east-1a" in ranking.rejections
    assert "aws offer t-eu: volume data is in aws us-east-1a" in ranking.rejections
    zoned = offer("t-b").model_copy(update={"availability_zones": ["us-east-1b"]})
    assert rank(req(volumes=((EBS,),)), [], [cap(zoned)]).candidates == []


def test_alternatives_take_the_first_usable_where_the_job_goes() -> None:
    eu = VolumeLocation("v2", "data-eu", backend="aws", region="eu-west-1")
    ranking = rank(req(volumes=((EBS, eu),)), [inst("i3", region="eu-west-1")], [])
    assert ranking.candidates[0].volumes == ("v2",)


def test_a_volume_in_use_elsewhere_queues_the_job_with_the_reason() -> None:
    held = replace(EBS, in_use_on="i9", in_use_by="job other-0-0")
    ranking = rank(req(volumes=((held,),)), [inst("i1")], [cap(offer())])
    assert ranking.best is None and ranking.only_busy
    assert ranking.waiting == "volume data is in use by job other-0-0; the job waits for it"
    # On the instance that holds it, the job may share it.
    assert rank(req(volumes=((held,),)), [inst("i9")], []).best.instance_id == "i9"
    pending = replace(EBS, pending=True)
    assert "not created yet" in rank(req(volumes=((pending,),)), [inst("i1")], []).waiting


def test_directory_volume_follows_its_fleet_then_its_machine() -> None:
    unbound = VolumeLocation("d1", "ckpt", fleet_name="ssh")
    a = replace(inst("a", fleet="ssh"), host_key="ssh:10.0.0.1")
    b = replace(inst("b", fleet="ssh"), host_key="ssh:10.0.0.2")
    c = replace(inst("c", fleet="gpu"), host_key="aws:1.2.3.4")
    ranking = rank(req(volumes=((unbound,),)), [a, b, c], [])
    assert {x.instance_id for x in ranking.candidates} == {"a", "b"}
    assert "gpu-c: volume ckpt belongs to fleet ssh" in ranking.rejections
    bound = replace(unbound, host_key="ssh:10.0.0.2")
    ranking = rank(req(volumes=((bound,),)), [a, b], [])
    assert [x.instance_id for x in ranking.candidates] == ["b"]
    assert "ssh-a: volume ckpt is on ssh:10.0.0.2" in ranking.rejections
    # A new instance is that machine again only on a backend that has one machine.
    local = VolumeLocation("d2", "ckpt", fleet_name="fleet", host_key="local:me")
    offers = [cap(offer("l", backend="local"), offer("t1"))]
    assert rank(req(volumes=((local,),)), [], offers).candidates == []
    again = replace(local, host_backend="local")
    names = [x.offer.instance.name for x in rank(req(volumes=((again,),)), [], offers).candidates]
    assert names == ["l"]
