"""The AWS backend's EBS volumes against moto's EC2 API, on instances booted as SSH hosts whose
attached volumes the harness makes real directories (ebs_disks.py): create (idempotent by
tag), register, attach (device, the mount on the host, one instance at a time, one zone),
detach, attach elsewhere with the data still there, delete (in use: refused; gone: success),
and EC2's own errors injected where moto has none."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest

from dstack.models.backends import AWSBackendConfig
from dstack.server.backends.aws.compute import AWSBackend
from dstack.server.backends.base import BackendError, Host, NoCapacityError, VolumeSpec

from . import ec2_hosts
from .ec2_proxy import Fault
from .test_aws_compute import config, new_host, offer

pytestmark = pytest.mark.e2e

ZONE_A = ec2_hosts.REGION + "a"
ZONE_B = ec2_hosts.REGION + "b"


@pytest.fixture
def two_zone_vpc(moto_ec2: ec2_hosts.MotoEC2) -> str:
    """A VPC named for this test with a subnet in each of two zones (a random /24 of
    10.234.0.0/16, split in two: the booted hosts' addresses never clash across tests)."""
    name = f"dstack-test-{secrets.token_hex(3)}"
    net = f"10.234.{secrets.randbelow(250)}"
    ec2 = moto_ec2.client()
    vpc = ec2.create_vpc(CidrBlock=f"{net}.0/24")["Vpc"]["VpcId"]
    ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": name}])
    ec2.create_subnet(VpcId=vpc, CidrBlock=f"{net}.0/25", AvailabilityZone=ZONE_A)
    ec2.create_subnet(VpcId=vpc, CidrBlock=f"{net}.128/25", AvailabilityZone=ZONE_B)
    return name


def backend_for(vpc_name: str, user: str, workdir: Any) -> AWSBackend:
    cfg = config(vpc_name, user).model_dump()
    cfg["tags"] = {"team": "ml"}
    backend = AWSBackend("main", AWSBackendConfig.model_validate(cfg), workdir, lambda s: s)
    backend.ebs.poll = 0.05
    return backend


def spec(volume_id: str, **kw: Any) -> VolumeSpec:
    kw.setdefault("region", ec2_hosts.REGION)
    return VolumeSpec(volume_id=volume_id, project_id="p1", name=kw.pop("name", "data"), **kw)


async def booted_host(backend: AWSBackend, booter: Any, instance_id: str, **request: Any) -> Host:
    """An instance of the backend's, running in moto and booted as a host (no agent: attach
    needs only the instance)."""
    host = new_host(instance_id)
    host.request.update(request)
    p = await backend.create_instance(host, offer())
    host.remote = dict(p.remote or {})
    deadline = time.monotonic() + 30
    while host.remote["ec2_id"] not in booter.hosts:
        assert time.monotonic() < deadline, f"{host.remote['ec2_id']} never booted"
        await asyncio.sleep(0.1)
    return host


def zone_of(moto_ec2: Any, ec2_id: str) -> str:
    res = moto_ec2.client().describe_instances(InstanceIds=[ec2_id])
    return str(res["Reservations"][0]["Instances"][0]["Placement"]["AvailabilityZone"])


def test_create_register_delete(moto_ec2: Any, two_zone_vpc: str, booter: Any) -> None:
    backend = backend_for(two_zone_vpc, booter.user, booter.workdir)
    ec2 = moto_ec2.client()

    async def scenario() -> None:
        v = spec("vol-row-1", size_gb=10, tags={"owner": "alice", "Name": "not-this"})
        first = await backend.create_volume(v)
        # A create repeated after a crash (the result never written) finds the first volume.
        again = await backend.create_volume(v)
        assert again.external_id == first.external_id
        (vol,) = ec2.describe_volumes(
            Filters=[{"Name": "tag:dstack_volume_id", "Values": ["vol-row-1"]}]
        )["Volumes"]
        assert vol["VolumeId"] == first.external_id and vol["VolumeType"] == "gp3"
        tags = {t["Key"]: t["Value"] for t in vol["Tags"]}
        assert tags == {
            "Name": "data",  # the server's own tags win over a user's
            "dstack_project": "main",
            "dstack_volume_id": "vol-row-1",
            "team": "ml",
            "owner": "alice",
        }
        # No zone given: the zone instances land in when nothing narrows their subnet.
        assert (first.region, first.availability_zone, first.size_gb) == (
            ec2_hosts.REGION,
            ZONE_A,
            10,
        )

        outside = ec2.create_volume(AvailabilityZone=ZONE_B, Size=25, VolumeType="gp2")
        reg = await backend.register_volume(
            spec("vol-row-2", name="ext", external_id=outside["VolumeId"])
        )
        assert (reg.external_id, reg.availability_zone, reg.size_gb) == (
            outside["VolumeId"],
            ZONE_B,
            25,
        )
        with pytest.raises(BackendError, match="volume vol-0123456789abcdef0 not found in us-"):
            await backend.register_volume(
                spec("vol-row-3", name="ext", external_id="vol-0123456789abcdef0")
            )
        with pytest.raises(BackendError, match="not among the backend's regions"):
            await backend.create_volume(spec("vol-row-4", size_gb=1, region="eu-west-1"))

        v.external_id = first.external_id
        await backend.delete_volume(v)
        await backend.delete_volume(v)  # already gone: success
        gone = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [first.external_id]}])
        assert gone["Volumes"] == []

        # A volume whose create result was lost in a crash is deleted by its tag.
        lost = await backend.create_volume(spec("vol-row-5", size_gb=2))
        await backend.delete_volume(spec("vol-row-5"))
        left = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [lost.external_id]}])
        assert left["Volumes"] == []
        await backend.close()

    asyncio.run(scenario())
    assert not booter.errors


def test_attach_mount_detach_move(moto_ec2: Any, two_zone_vpc: str, booter: Any) -> None:
    backend = backend_for(two_zone_vpc, booter.user, booter.workdir)
    disks = booter.disks

    async def scenario() -> tuple[str, str, str]:
        a = await booted_host(backend, booter, "inst-a")
        b = await booted_host(backend, booter, "inst-b")
        # The zone a job's volumes are in narrows the subnet its instance is launched in.
        c = await booted_host(backend, booter, "inst-c", availability_zones=[ZONE_B])
        a_id, b_id, c_id = (h.remote["ec2_id"] for h in (a, b, c))
        assert [zone_of(moto_ec2, i) for i in (a_id, b_id, c_id)] == [ZONE_A, ZONE_A, ZONE_B]

        v = spec("vol-row-1", size_gb=10)
        v.external_id = (await backend.create_volume(v)).external_id
        att = await backend.attach_volume(v, a)
        assert att.device == "/dev/sdf" and att.data["ec2_id"] == a_id
        assert (await backend.attach_volume(v, a)).device == "/dev/sdf"  # already: success
        assert not await backend.is_volume_detached(v, a)
        m = disks.wait_mounted(v.external_id, a_id)
        host_a = booter.hosts[a_id]
        assert m.target == disks.mount_point("/dev/sdf")
        assert m.target.endswith("/.dstack-agent/state/mnt/sdf")
        assert host_a.run("mountpoint", "-q", m.target).returncode == 0
        assert host_a.run("stat", "-c", "%U", m.target).stdout.strip() == booter.user

        # Written inside the host at the mount point: on the disk; and the other way round.
        disk = disks.disk(v.external_id)
        assert disks.disk_of("data") == disk  # how an end-to-end test finds it by name
        as_user = ("runuser", "-u", booter.user, "--", "sh", "-c")  # as a job would
        assert host_a.run(*as_user, f"echo step-1 > {m.target}/ckpt").returncode == 0
        assert (disk / "ckpt").read_text() == "step-1\n"
        (disk / "from-outside").write_text("hello")
        assert host_a.run("cat", f"{m.target}/from-outside").stdout == "hello"

        with pytest.raises(BackendError, match=f"attached to instance {a_id}"):
            await backend.attach_volume(v, b)

        other = spec("vol-row-2", name="other", size_gb=5, availability_zone=ZONE_B)
        other.external_id = (await backend.create_volume(other)).external_id
        with pytest.raises(BackendError, match=f"{ZONE_B} and instance {a_id} in {ZONE_A}"):
            await backend.attach_volume(other, a)
        assert (await backend.attach_volume(other, c)).device == "/dev/sdf"
        disks.wait_mounted(other.external_id, c_id)
        # A second volume on one instance takes the next free device name.
        third = spec("vol-row-3", name="third", size_gb=1)
        third.external_id = (await backend.create_volume(third)).external_id
        assert (await backend.attach_volume(third, a)).device == "/dev/sdg"
        assert disks.wait_mounted(third.external_id, a_id).target.endswith("/mnt/sdg")

        await backend.detach_volume(v, a)
        assert await backend.is_volume_detached(v, a)
        await backend.detach_volume(v, a)  # not attached: done
        disks.wait_mounted(v.external_id, None)
        assert host_a.run("mountpoint", "-q", m.target).returncode != 0
        assert host_a.run("ls", m.target).stdout == ""  # the data left with the volume

        # Attached to another instance: the data written on the first is there.
        assert (await backend.attach_volume(v, b)).device == "/dev/sdf"
        m_b = disks.wait_mounted(v.external_id, b_id)
        assert booter.hosts[b_id].run("cat", f"{m_b.target}/ckpt").stdout == "step-1\n"

        with pytest.raises(BackendError, match="VolumeInUse"):
            await backend.delete_volume(v)
        await backend.detach_volume(v, b, force=True)
        assert await backend.is_volume_detached(v, b)
        disks.wait_mounted(v.external_id, None)
        await backend.delete_volume(v)
        assert await backend.is_volume_detached(v, b)  # gone: detached from everything
        await backend.close()
        return str(v.external_id), a_id, b_id

    v_id, a_id, b_id = asyncio.run(scenario())
    assert not booter.errors
    moves = [e.split()[0] + " " + e.split()[2] for e in disks.log if e.split()[1] == v_id]
    assert moves == [f"mount {a_id}", f"umount {a_id}", f"mount {b_id}", f"umount {b_id}"]


def test_ec2_errors_injected(
    moto_ec2: Any, two_zone_vpc: str, booter: Any, ec2_proxy: Any, monkeypatch: Any
) -> None:
    """What moto never answers: a refused CreateVolume, DeleteVolume's VolumeInUse on a
    volume EC2 still sees in use (a detach that has not finished), and an offer whose zones
    exclude the one the job's volumes are in."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", ec2_proxy.url)
    backend = backend_for(two_zone_vpc, booter.user, booter.workdir)
    ec2_proxy.add(
        Fault(
            "CreateVolume",
            "VolumeLimitExceeded",
            "You have exceeded your maximum gp3 storage limit of 50 TiB in this region.",
            times=1,
        )
    )
    busy = "Volume vol-0a is currently attached to i-0b"
    ec2_proxy.add(Fault("DeleteVolume", "VolumeInUse", busy, times=1))
    busy_host = new_host("inst-z")
    busy_host.request["availability_zones"] = [ZONE_B]
    zoned = offer().model_copy(update={"availability_zones": [ZONE_A]})

    async def scenario() -> None:
        v = spec("vol-row-1", size_gb=10)
        with pytest.raises(BackendError, match="VolumeLimitExceeded: You have exceeded"):
            await backend.create_volume(v)
        assert (
            moto_ec2.client().describe_volumes(
                Filters=[{"Name": "tag:dstack_volume_id", "Values": ["vol-row-1"]}]
            )["Volumes"]
            == []
        )
        v.external_id = (await backend.create_volume(v)).external_id  # the next try works
        with pytest.raises(BackendError, match=f"VolumeInUse: {busy}"):
            await backend.delete_volume(v)
        await backend.delete_volume(v)
        with pytest.raises(NoCapacityError, match=f"exclude {ZONE_B}"):
            await backend.create_instance(busy_host, zoned)
        await backend.close()

    asyncio.run(scenario())
    assert moto_ec2.instances(("pending", "running")) == []
    assert [c["Action"] for c in ec2_proxy.calls].count("CreateVolume") == 2
