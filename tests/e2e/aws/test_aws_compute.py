"""The AWS backend's compute against moto's EC2 API, with instances that boot as SSH hosts:
create (idempotent by tag), boot and agent bootstrap, the agent reached through the SSH tunnel,
inventory, a reclaimed instance reported gone, terminate confirmed by EC2."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from dstack.models.backends import AWSBackendConfig
from dstack.models.instances import Disk, InstanceType, Resources
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.server.agent_client import AgentClient
from dstack.server.backends.aws.compute import AWSBackend
from dstack.server.backends.base import Host, HostGone, NoCapacityError, Provisioning
from dstack.server.services.ssh_keys import generate_keypair

from . import ec2_hosts

pytestmark = pytest.mark.e2e


def config(vpc_name: str, user: str) -> AWSBackendConfig:
    return AWSBackendConfig.model_validate(
        {
            "type": "aws",
            "creds": {"type": "access_key", "access_key": "testing", "secret_key": "testing"},
            "regions": [ec2_hosts.REGION],
            "vpc_name": vpc_name,
            "public_ips": False,
            "os_images": {
                "cpu": {"name": ec2_hosts.AMI_NAME, "owner": ec2_hosts.AMI_OWNER, "user": user}
            },
        }
    )


def offer(instance_type: str = "t3.medium", spot: bool = False) -> InstanceOfferWithAvailability:
    return InstanceOfferWithAvailability(
        backend="aws",
        instance=InstanceType(
            name=instance_type,
            resources=Resources(cpus=2, memory_mib=4096, spot=spot, disk=Disk(size_mib=102400)),
        ),
        region=ec2_hosts.REGION,
        price=0.0416,
    )


def new_host(instance_id: str = "inst-1") -> Host:
    private, public = generate_keypair("dstack-project-main")
    return Host(
        instance_id=instance_id,
        project_id="p1",
        name="cloud-fleet-0",
        agent_token="agent-token-1",
        project_key_enc=private,  # the test's decrypt is the identity
        project_public_key=public,
        request={"disk_gb": 150},
    )


async def boot(backend: AWSBackend, host: Host, timeout: float = 60) -> Provisioning:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = await backend.advance(host)
        if p is not None:
            return p
        await asyncio.sleep(0.3)
    raise AssertionError("the instance never booted")


def apply(host: Host, p: Provisioning) -> None:
    host.remote = dict(p.remote or {})
    host.hostname = p.hostname
    host.agent_url = p.agent_url


def test_create_boot_reach_reclaim_terminate(moto_ec2: Any, vpc: Any, booter: Any) -> None:
    backend = AWSBackend("main", config(vpc[0], booter.user), booter.workdir, lambda s: s)
    host = new_host()

    async def scenario() -> None:
        await backend.check()
        first = await backend.create_instance(host, offer())
        ec2_id = first.remote["ec2_id"]
        # A create repeated (a server that crashed before writing the result) finds the first.
        again = await backend.create_instance(host, offer())
        assert again.remote["ec2_id"] == ec2_id
        assert len(moto_ec2.instances(("pending", "running"))) == 1
        desc = moto_ec2.client().describe_instances(InstanceIds=[ec2_id])
        inst = desc["Reservations"][0]["Instances"][0]
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["dstack_instance_id"] == "inst-1" and tags["dstack_project"] == "main"
        volumes = moto_ec2.client().describe_volumes(
            Filters=[{"Name": "attachment.instance-id", "Values": [ec2_id]}]
        )["Volumes"]
        assert [v["Size"] for v in volumes] == [150]
        attached = inst["SecurityGroups"] or inst["NetworkInterfaces"][0]["Groups"]
        groups = moto_ec2.client().describe_security_groups(
            GroupIds=[g["GroupId"] for g in attached]
        )["SecurityGroups"]
        assert [g["GroupName"] for g in groups] == ["dstack-main"]
        ports = {(p.get("FromPort"), p.get("ToPort")) for p in groups[0]["IpPermissions"]}
        assert (22, 22) in ports
        cidrs = [r["CidrIp"] for p in groups[0]["IpPermissions"] for r in p.get("IpRanges", [])]
        assert cidrs == [vpc[1]]  # SSH from inside the VPC only: no public address

        apply(host, first)
        p = await boot(backend, host)
        apply(host, p)
        assert p.hostname == inst["PrivateIpAddress"]
        client = AgentClient(p.agent_url, "agent-token-1", transport=backend.agent_transport(host))
        try:
            assert await client.healthcheck()
            info = await client.host_info()
        finally:
            await client.aclose()
        ready = await backend.ready(host, info)
        assert ready.host_info["internal_ip"] == inst["PrivateIpAddress"]

        items = await backend.inventory()
        assert [(i.instance_id, i.handle["ec2_id"]) for i in items] == [("inst-1", ec2_id)]
        assert await backend.revive(host) is None  # still running: nothing to report

        # EC2 reclaims the machine: the backend says it is gone, not merely silent.
        moto_ec2.client().terminate_instances(InstanceIds=[ec2_id])
        with pytest.raises(HostGone, match="terminated"):
            await backend.revive(host)
        assert await backend.terminate(host) is None
        assert await backend.terminate(host) is None  # idempotent
        assert await backend.inventory() == []
        await backend.close()

    asyncio.run(scenario())
    assert not booter.errors


def test_terminate_by_tag_after_lost_create(moto_ec2: Any, vpc: Any, booter: Any) -> None:
    """The server crashed after RunInstances, before it wrote the EC2 id: terminate finds
    the instance by its tag alone."""
    booter.hold_all = True
    backend = AWSBackend("main", config(vpc[0], booter.user), booter.workdir, lambda s: s)
    host = new_host("inst-lost")

    async def scenario() -> None:
        await backend.create_instance(host, offer())
        assert len(moto_ec2.instances(("pending", "running"))) == 1
        host.remote = {"region": ec2_hosts.REGION}  # nothing else was recorded
        assert await backend.terminate(host) is None
        assert moto_ec2.instances(("pending", "running")) == []
        await backend.close()

    asyncio.run(scenario())


def test_capacity_error_is_no_capacity(moto_ec2: Any, vpc: Any, booter: Any) -> None:
    """A RunInstances refused for capacity is `NoCapacityError` (the job tries its next
    offer); moto never runs out, so the refusal is injected at the HTTP boundary."""
    from botocore.exceptions import ClientError

    backend = AWSBackend("main", config(vpc[0], booter.user), booter.workdir, lambda s: s)
    ec2 = backend.ec2.client("ec2", ec2_hosts.REGION)

    def refuse(params: Any, **kwargs: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "InsufficientInstanceCapacity", "Message": "none left"}},
            "RunInstances",
        )

    ec2.meta.events.register("before-call.ec2.RunInstances", refuse)

    async def scenario() -> None:
        with pytest.raises(NoCapacityError, match="InsufficientInstanceCapacity"):
            await backend.create_instance(new_host("inst-nocap"), offer("p4d.24xlarge"))
        await backend.close()

    asyncio.run(scenario())
    assert moto_ec2.instances() == []
