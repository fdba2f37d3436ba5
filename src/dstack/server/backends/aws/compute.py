"""The `aws` backend: EC2 instances for one project, reached and bootstrapped over SSH.

Life of an instance:
1. `create_instance` runs (or finds, by tag) the EC2 instance and returns at once: the host
   has no agent yet (`remote.phase = launched`).
2. While the instance provisions, `advance` looks at EC2: once it runs and has an address, the
   agent is installed over SSH with the project key (the same bootstrap as SSH fleets: nothing
   is downloaded on the instance) and `remote.phase` becomes `bootstrapped`.
3. From then on the host is an SSH host: agent traffic, job relays and service upstreams ride
   the server's one SSH connection to it.
4. `terminate` terminates by EC2 id and by tag, and reports success only once EC2 says the
   instance is shutting down or gone.
EBS volumes (`capabilities.volumes`) are created, found and deleted by their
`dstack_volume_id` tag (`volumes.py`); a job's instance is launched in the zone its volumes are
in (`host.request["availability_zones"]`, which placement narrows to the volumes' zone).
An instance EC2 lost (a spot reclaim, a manual terminate) is reported by `revive` as
`HostGone`, so its jobs end at once instead of waiting out the unreachable grace.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from dstack.models.backends import AWSBackendConfig
from dstack.models.instances import Disk
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.server.backends.aws.ec2 import EC2, GONE_STATES, TAG_INSTANCE, LaunchSpec
from dstack.server.backends.aws.volumes import EBS, NewVolume
from dstack.server.backends.base import (
    BackendError,
    Capabilities,
    Compute,
    Host,
    HostGone,
    InventoryItem,
    NoCapacityError,
    OfferRequirements,
    PermanentError,
    Provisioning,
    Ready,
    Stream,
    VolumeAttachment,
    VolumeProvisioning,
    VolumeSpec,
)
from dstack.server.backends.ssh.backend import SSHBackend
from dstack.server.backends.ssh.connection import HostUnreachable

PHASE_LAUNCHED = "launched"
PHASE_BOOTSTRAPPED = "bootstrapped"
DEFAULT_DISK_GB = 100
# The smallest root volume launched: an AMI's own snapshot needs room (Ubuntu's is 8 GB).
MIN_DISK_GB = 20


def disk_gb(requested: float | None) -> int:
    return max(MIN_DISK_GB, int(requested)) if requested else DEFAULT_DISK_GB


class AWSBackend(Compute):
    type = "aws"
    capabilities = Capabilities(
        spot=True,
        cluster_placement=True,
        reservations=True,
        multinode=True,
        volumes=True,
    )
    offers_ttl = 180.0
    provisioning_poll = 2.0  # each look is a DescribeInstances call
    # How long a volume may stay `creating` or `attaching` before the call fails (EBS takes
    # seconds; the reconciler retries a failure with backoff).
    volume_timeout = 120.0

    def __init__(
        self,
        project: str,
        config: AWSBackendConfig,
        data_dir: Path,
        decrypt: Callable[[str], str],
    ) -> None:
        self.project = project
        self.projects = frozenset({project})
        self.config = config
        self.ec2 = EC2(project, config)
        self.ebs = EBS(self.ec2)
        # Hosts are SSH hosts once booted: the SSH backend's connection pool and bootstrap.
        self.ssh = SSHBackend(data_dir, decrypt)
        self.provisioning_timeout = float(
            os.environ.get("DSTACK_SERVER_AWS_PROVISIONING_TIMEOUT") or 600
        )

    def regions(self) -> list[str]:
        return list(self.config.regions or [])

    async def check(self) -> None:
        await asyncio.to_thread(self.ec2.check, (self.regions() or ["us-east-1"])[0])

    # -- capacity -----------------------------------------------------------------------------

    async def offers(self, requirements: OfferRequirements) -> list[InstanceOfferWithAvailability]:
        """The catalog's instance types, with the disk the job asks for (EBS is sized at
        launch: a catalog row's disk is no limit)."""
        from dstack.server.backends.catalog import shared_catalog

        offers = await shared_catalog().offers(
            self.type, requirements, regions=self.regions() or None
        )
        disk_mib = disk_gb(requirements.disk_gb) * 1024
        return [_with_disk(o, disk_mib) for o in offers]

    async def create_instance(
        self, host: Host, offer: InstanceOfferWithAvailability | None
    ) -> Provisioning:
        if offer is None:
            raise BackendError("an AWS instance needs an offer")
        if not host.project_public_key or not host.project_key_enc:
            raise BackendError("the project has no SSH key to reach the instance with")
        region = offer.region
        found = await asyncio.to_thread(self.ec2.find, region, host.instance_id)
        if found is None:
            spec = self._launch_spec(host, offer)
            found = await asyncio.to_thread(self.ec2.run, spec)
            _failpoint("aws_after_run_instances")
        image = self.ec2.image_for(bool(offer.instance.resources.gpus))
        remote = {
            "phase": PHASE_LAUNCHED,
            "region": region,
            "ec2_id": found["InstanceId"],
            "user": image.user,
            "port": 22,
            "project_key_enc": host.project_key_enc,
            "project_public_key": host.project_public_key,
            "spot": offer.instance.resources.spot,
            # Placement keeps a job with an EBS volume to the volume's zone.
            "availability_zone": found.get("Placement", {}).get("AvailabilityZone"),
        }
        # The agent's token: chosen here when the server has none for the instance yet; the
        # bootstrap (in `advance`) hands the stored one to the agent.
        token = None if host.agent_token else secrets.token_urlsafe(32)
        return Provisioning(agent_url="", hostname="", remote=remote, agent_token=token)

    def _launch_spec(self, host: Host, offer: InstanceOfferWithAvailability) -> LaunchSpec:
        resources = offer.instance.resources
        request = host.request
        return LaunchSpec(
            instance_id=host.instance_id,
            name=host.name,
            region=offer.region,
            instance_type=offer.instance.name,
            image=self.ec2.image_for(bool(resources.gpus)),
            gpu=bool(resources.gpus),
            disk_gb=disk_gb(request.get("disk_gb")),
            spot=resources.spot,
            max_price=request.get("max_price"),
            public_key=host.project_public_key or "",
            availability_zones=_zones(offer.availability_zones, request.get("availability_zones")),
            tags=tuple(sorted((str(k), str(v)) for k, v in (request.get("tags") or {}).items())),
            reservation=request.get("reservation"),
            placement_group=(
                f"dstack-{self.project}-{request['fleet']}"
                if request.get("placement") == "cluster" and request.get("fleet")
                else None
            ),
        )

    async def advance(self, host: Host) -> Provisioning | None:
        rc = dict(host.remote)
        if rc.get("phase") != PHASE_LAUNCHED:
            return None
        inst = await asyncio.to_thread(self.ec2.describe, rc["region"], rc["ec2_id"])
        state = (inst or {}).get("State", {}).get("Name", "terminated")
        if state in GONE_STATES:
            raise HostGone(_gone_message(inst, rc))
        address = _address(inst or {}, self.config.public_ips)
        if state != "running" or not address:
            return None
        rc.update(hostname=address, internal_ip=(inst or {}).get("PrivateIpAddress"))
        try:
            b = await self.ssh.bootstrap(
                self.ssh.params(rc), None, host.agent_token or "", rc["project_public_key"]
            )
        except HostUnreachable:
            return None  # sshd is not up yet: booting
        rc.update(
            phase=PHASE_BOOTSTRAPPED,
            host_key=b.host_key,
            agent_port=b.agent_port,
            supervisor=b.supervisor,
            docker_note=b.docker_note,
        )
        return Provisioning(
            agent_url=f"http://127.0.0.1:{b.agent_port}", hostname=address, remote=rc
        )

    async def ready(self, host: Host, info: dict[str, Any]) -> Ready:
        info = dict(info)
        info["internal_ip"] = host.remote.get("internal_ip") or host.remote.get("hostname")
        info["supervisor"] = host.remote.get("supervisor") or "loop"
        if host.remote.get("docker_note"):
            info["docker"] = False
            info["docker_note"] = host.remote["docker_note"]
        return Ready(host_info=info)

    async def revive(self, host: Host) -> Provisioning | None:
        """An agent that stopped answering: if EC2 lost the instance, say so (its jobs end at
        once); otherwise it may come back (a network blip), nothing to restart from here."""
        rc = host.remote
        if not rc.get("ec2_id"):
            return None
        inst = await asyncio.to_thread(self.ec2.describe, rc["region"], rc["ec2_id"])
        state = (inst or {}).get("State", {}).get("Name", "terminated")
        if state in GONE_STATES:
            raise HostGone(_gone_message(inst, rc))
        return None

    async def terminate(self, host: Host) -> str | None:
        rc = host.remote
        region = rc.get("region")
        if rc.get("hostname") and rc.get("user"):
            await self.ssh.pool.drop(self.ssh.params(rc))
        regions = [region] if region else self.regions()
        for r in regions:
            ids = {
                i["InstanceId"]
                for i in await asyncio.to_thread(self.ec2.tagged, r)
                if _tag(i, TAG_INSTANCE) == host.instance_id
            }
            if rc.get("ec2_id") and r == region:
                ids.add(rc["ec2_id"])
            await asyncio.to_thread(self.ec2.terminate, r, sorted(ids))
            for ec2_id in ids:
                inst = await asyncio.to_thread(self.ec2.describe, r, ec2_id)
                state = (inst or {}).get("State", {}).get("Name", "terminated")
                if state not in GONE_STATES:
                    raise BackendError(f"EC2 still reports {ec2_id} as {state}")
        return None

    async def inventory(self) -> list[InventoryItem]:
        items: list[InventoryItem] = []
        for region in self.regions():
            for inst in await asyncio.to_thread(self.ec2.tagged, region):
                items.append(
                    InventoryItem(
                        instance_id=_tag(inst, TAG_INSTANCE),
                        description=f"EC2 instance {inst['InstanceId']} in {region}",
                        handle={"region": region, "ec2_id": inst["InstanceId"]},
                    )
                )
        return items

    async def terminate_orphan(self, item: InventoryItem) -> None:
        await asyncio.to_thread(self.ec2.terminate, item.handle["region"], [item.handle["ec2_id"]])

    async def diagnose(self, host: Host) -> str:
        rc = host.remote
        if rc.get("phase") != PHASE_BOOTSTRAPPED:
            inst = None
            if rc.get("ec2_id"):
                inst = await asyncio.to_thread(self.ec2.describe, rc["region"], rc["ec2_id"])
            state = (inst or {}).get("State", {}).get("Name", "unknown")
            return f"EC2 instance {rc.get('ec2_id')} is {state}; the agent was never installed"
        return await self.ssh.diagnose(host)

    # -- EBS volumes ----------------------------------------------------------------------------

    def volume_region(self, volume: VolumeSpec) -> str:
        """The volume's region: the one it names (it must be one the backend uses: instances are
        created nowhere else), or the backend's only region."""
        regions = self.regions()
        region = volume.region or (regions[0] if len(regions) == 1 else None)
        if not region:
            raise BackendError(
                f"volume {volume.name} names no region (the backend has no single region)"
            )
        if regions and region not in regions:
            raise BackendError(
                f"volume {volume.name} is in {region}, not among the backend's regions "
                f"({', '.join(regions)})"
            )
        return region

    async def create_volume(self, volume: VolumeSpec) -> VolumeProvisioning:
        if not volume.size_gb or volume.size_gb < 1:
            raise BackendError(f"volume {volume.name} needs a size to be created")
        region = self.volume_region(volume)
        zone = volume.availability_zone or await asyncio.to_thread(self.ebs.default_zone, region)
        spec = NewVolume(
            volume_id=volume.volume_id,
            name=volume.name,
            region=region,
            availability_zone=zone,
            size_gb=int(volume.size_gb),
            tags=tuple(sorted((str(k), str(v)) for k, v in volume.tags.items())),
        )
        vol = await asyncio.to_thread(self.ebs.create, spec, self.volume_timeout)
        return _provisioning(region, vol)

    async def register_volume(self, volume: VolumeSpec) -> VolumeProvisioning:
        region = self.volume_region(volume)
        if not volume.external_id:
            raise PermanentError(f"volume {volume.name} names no volume_id to register")
        vol = await asyncio.to_thread(self.ebs.describe, region, volume.external_id)
        if vol is None:  # retrying cannot make it exist: the volume fails with this
            raise PermanentError(f"volume {volume.external_id} not found in {region}")
        return _provisioning(region, vol)

    async def delete_volume(self, volume: VolumeSpec) -> None:
        """Deletes the recorded EBS volume and any other live one tagged for this volume (a
        create whose result was lost in a crash)."""
        region = self.volume_region(volume)
        tagged = await asyncio.to_thread(self.ebs.tagged, region, volume.volume_id)
        ids = {v["VolumeId"] for v in tagged}
        if volume.external_id:
            ids.add(volume.external_id)
        for ebs_id in sorted(ids):
            await asyncio.to_thread(self.ebs.delete, region, ebs_id)

    async def attach_volume(self, volume: VolumeSpec, host: Host) -> VolumeAttachment:
        region, ebs_id, ec2_id = self._volume_on_host(volume, host)
        if not ec2_id:
            raise BackendError(f"{self.host_label(host)} has no EC2 instance yet")
        device = await asyncio.to_thread(
            self.ebs.attach, region, ebs_id, ec2_id, self.volume_timeout
        )
        # On Nitro instances the kernel names the disk /dev/nvme<N>n1, not `device`; udev's
        # stable link by the volume's serial is recorded for an agent that looks for it.
        by_id = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + ebs_id.replace("-", "")
        return VolumeAttachment(
            device=device,
            # `aliases`: where the device may show up instead (Nitro instances expose EBS
            # volumes as NVMe devices); the agent uses the first that exists.
            data={"ec2_id": ec2_id, "ebs_id": ebs_id, "region": region, "aliases": [by_id]},
        )

    async def detach_volume(self, volume: VolumeSpec, host: Host, force: bool = False) -> None:
        region, ebs_id, ec2_id = self._volume_on_host(volume, host)
        if ec2_id:
            await asyncio.to_thread(self.ebs.detach, region, ebs_id, ec2_id, force)

    async def is_volume_detached(self, volume: VolumeSpec, host: Host) -> bool:
        region, ebs_id, ec2_id = self._volume_on_host(volume, host)
        if not ec2_id:
            return True  # never attached: attach needs the EC2 id
        return await asyncio.to_thread(self.ebs.is_detached, region, ebs_id, ec2_id)

    def _volume_on_host(self, volume: VolumeSpec, host: Host) -> tuple[str, str, str | None]:
        region = self.volume_region(volume)
        if not volume.external_id:
            raise BackendError(f"volume {volume.name} has no EBS volume yet")
        host_region = host.remote.get("region")
        if host_region and host_region != region:
            raise BackendError(
                f"volume {volume.name} is in {region} and {self.host_label(host)} in {host_region}"
            )
        return region, volume.external_id, host.remote.get("ec2_id")

    # -- transport: an SSH host once booted ---------------------------------------------------

    def agent_transport(self, host: Host) -> httpx.AsyncBaseTransport | None:
        return self.ssh.agent_transport(host)

    async def open_stream(self, host: Host, port: int) -> Stream:
        return await self.ssh.open_stream(host, port)

    async def upstream(self, host: Host, port: int) -> tuple[str, int] | None:
        return await self.ssh.upstream(host, port)

    def host_access(self, host: Host) -> dict[str, Any]:
        return self.ssh.host_access(host)

    def host_label(self, host: Host) -> str:
        return host.remote.get("hostname") or host.remote.get("ec2_id") or host.name

    async def close(self) -> None:
        await self.ssh.close()


def _with_disk(
    offer: InstanceOfferWithAvailability, disk_mib: int
) -> InstanceOfferWithAvailability:
    resources = offer.instance.resources.model_copy(update={"disk": Disk(size_mib=disk_mib)})
    instance = offer.instance.model_copy(update={"resources": resources})
    return offer.model_copy(update={"instance": instance})


def _zones(offered: list[str] | None, wanted: list[str] | None) -> tuple[str, ...]:
    """The zones a subnet may be in: those the offer has that the job asked for (the zone of
    its volumes, the fleet's or run's `availability_zones`). None in common is no capacity for
    this offer, never "any zone": a job whose volume is in one zone must not land in another."""
    if offered and wanted:
        both = tuple(z for z in offered if z in wanted)
        if not both:
            raise NoCapacityError(
                f"the offer's zones ({', '.join(offered)}) exclude {', '.join(wanted)}"
            )
        return both
    return tuple(offered or wanted or ())


def _provisioning(region: str, vol: dict[str, Any]) -> VolumeProvisioning:
    return VolumeProvisioning(
        external_id=str(vol["VolumeId"]),
        region=region,
        availability_zone=vol.get("AvailabilityZone"),
        size_gb=int(vol["Size"]),
        data={"volume_type": vol.get("VolumeType")},
    )


def _tag(inst: dict[str, Any], key: str) -> str | None:
    return next((t["Value"] for t in inst.get("Tags", []) if t["Key"] == key), None)


def _address(inst: dict[str, Any], public: bool) -> str | None:
    if public:
        return inst.get("PublicIpAddress") or None
    return inst.get("PrivateIpAddress") or None


def _gone_message(inst: dict[str, Any] | None, rc: dict[str, Any]) -> str:
    kind = "spot instance" if rc.get("spot") else "instance"
    if inst is None:
        return f"EC2 no longer knows the {kind} {rc.get('ec2_id')}"
    state = inst.get("State", {}).get("Name")
    reason = inst.get("StateReason", {}).get("Message") or inst.get("StateTransitionReason")
    return f"EC2 reports the {kind} {rc.get('ec2_id')} {state}" + (f" ({reason})" if reason else "")


def _failpoint(name: str) -> None:
    """Tests crash the server at a named point (`DSTACK_SERVER_FAILPOINT`) to prove that what
    was done before it is found again after a restart."""
    if os.environ.get("DSTACK_SERVER_FAILPOINT") == name:
        os._exit(17)
