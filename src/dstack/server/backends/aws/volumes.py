"""EBS volumes of the AWS backend, synchronous boto3 (the backend runs each call in a thread).

Idempotency rests on tags, as for instances: every volume the server creates carries
`dstack_project` and `dstack_volume_id` (the server's volume id), so a create repeated after a
crash finds the first volume instead of making a second, and a delete repeated after a crash
(or for a volume whose create result was never written) finds it too.

EC2 lets a volume be attached only to an instance in its own availability zone, and to one
instance at a time; both are checked here before `AttachVolume`, so the message names what is
wrong (EC2's own errors, and moto's silence about them, say less).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from dstack.server.backends.aws.ec2 import EC2, TAG_PROJECT, describe_error, error_code
from dstack.server.backends.base import BackendError

TAG_VOLUME = "dstack_volume_id"
VOLUME_TYPE = "gp3"
# States of a volume that still exists (`error` is a failed create, `deleting` is going away).
LIVE_VOLUME_STATES = ("creating", "available", "in-use")
# Attachment states that hold the volume (EC2 shows `detached` briefly before dropping it).
HOLDING = ("attaching", "attached", "busy", "detaching")
VOLUME_NOT_FOUND = frozenset({"InvalidVolume.NotFound", "InvalidVolumeID.Malformed"})
# DetachVolume of a volume that is no longer attached there: the detach is done.
NOT_ATTACHED = frozenset({"IncorrectState", "InvalidAttachment.NotFound"})
# Names EC2 accepts for data volumes; `/dev/sdX` and `/dev/xvdX` are the same slot.
DEVICE_NAMES = tuple(f"/dev/sd{c}" for c in "fghijklmnop")


@dataclass(frozen=True)
class NewVolume:
    volume_id: str  # the server's id (the tag)
    name: str
    region: str
    availability_zone: str
    size_gb: int
    tags: tuple[tuple[str, str], ...] = ()  # the volume configuration's `tags`


def device_slot(device: str) -> str:
    """The letter a device name occupies (`/dev/sdf`, `/dev/xvdf` and `xvdf` are all `f`)."""
    base = device.rsplit("/", 1)[-1]
    for prefix in ("xvd", "sd"):
        if base.startswith(prefix):
            return base[len(prefix) :]
    return base


def free_device(used: list[str]) -> str:
    taken = {device_slot(d) for d in used}
    for name in DEVICE_NAMES:
        if device_slot(name) not in taken:
            return name
    raise BackendError("the instance has no free device name left (/dev/sdf to /dev/sdp)")


def holder(volume: dict[str, Any]) -> dict[str, Any] | None:
    """The attachment that holds the volume now, if any."""
    return next((a for a in volume.get("Attachments", []) if a.get("State") in HOLDING), None)


class EBS:
    """EBS calls for one project, on the backend's EC2 clients."""

    def __init__(
        self,
        ec2: EC2,
        poll: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ec2 = ec2
        self.poll = poll
        self.sleep = sleep

    def _client(self, region: str) -> Any:
        return self.ec2.client("ec2", region)

    def default_zone(self, region: str) -> str:
        """Where a volume goes when the user names no zone: the zone of the subnet instances
        land in when nothing narrows it (`EC2.subnet`'s stable choice), so they can reach it."""
        return str(self.ec2.subnet(region).get("AvailabilityZone") or "")

    # -- lookups ------------------------------------------------------------------------------

    def describe(self, region: str, ebs_id: str) -> dict[str, Any] | None:
        """The volume by its EBS id; None when EC2 does not know it."""
        try:
            res = self._client(region).describe_volumes(VolumeIds=[ebs_id])
        except ClientError as e:
            if error_code(e) in VOLUME_NOT_FOUND:
                return None
            raise BackendError(f"volume {ebs_id} in {region}: {describe_error(e)}") from e
        found = res.get("Volumes", [])
        return found[0] if found else None

    def tagged(self, region: str, volume_id: str) -> list[dict[str, Any]]:
        """The live volumes created for the server's volume id, oldest first."""
        res = self._client(region).describe_volumes(
            Filters=[
                {"Name": f"tag:{TAG_VOLUME}", "Values": [volume_id]},
                {"Name": f"tag:{TAG_PROJECT}", "Values": [self.ec2.project]},
                {"Name": "status", "Values": list(LIVE_VOLUME_STATES)},
            ]
        )
        return sorted(
            res.get("Volumes", []), key=lambda v: (str(v.get("CreateTime")), v["VolumeId"])
        )

    # -- create, delete -----------------------------------------------------------------------

    def create(self, spec: NewVolume, timeout: float) -> dict[str, Any]:
        """The volume for `spec.volume_id`, created unless a live one carries its tag; returns
        once EC2 says it is available (an attach of a `creating` volume fails)."""
        found = self.tagged(spec.region, spec.volume_id)
        vol = found[0] if found else self._create(spec)
        return self.wait_available(spec.region, vol["VolumeId"], timeout)

    def _create(self, spec: NewVolume) -> dict[str, Any]:
        tags = {
            **(self.ec2.config.tags or {}),
            **dict(spec.tags),
            "Name": spec.name,
            TAG_PROJECT: self.ec2.project,
            TAG_VOLUME: spec.volume_id,
        }
        try:
            return dict(
                self._client(spec.region).create_volume(
                    AvailabilityZone=spec.availability_zone,
                    Size=spec.size_gb,
                    VolumeType=VOLUME_TYPE,
                    TagSpecifications=[
                        {
                            "ResourceType": "volume",
                            "Tags": [{"Key": k, "Value": str(v)} for k, v in tags.items()],
                        }
                    ],
                )
            )
        except ClientError as e:
            raise BackendError(
                f"creating a {spec.size_gb} GB volume in {spec.availability_zone}: "
                f"{describe_error(e)}"
            ) from e

    def wait_available(self, region: str, ebs_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            vol = self.describe(region, ebs_id)
            state = (vol or {}).get("State")
            if vol is None or state == "error":
                if vol is not None:
                    self.delete(region, ebs_id)  # a failed create leaves nothing behind
                raise BackendError(f"EBS could not create volume {ebs_id} in {region} ({state})")
            if state in ("available", "in-use"):
                return vol
            if time.monotonic() >= deadline:
                raise BackendError(f"volume {ebs_id} is still {state} after {timeout:.0f} s")
            self.sleep(self.poll)

    def delete(self, region: str, ebs_id: str) -> None:
        try:
            self._client(region).delete_volume(VolumeId=ebs_id)
        except ClientError as e:
            if error_code(e) in VOLUME_NOT_FOUND:
                return
            raise BackendError(f"deleting volume {ebs_id}: {describe_error(e)}") from e

    # -- attach, detach -----------------------------------------------------------------------

    def attach(self, region: str, ebs_id: str, ec2_id: str, timeout: float) -> str:
        """Attach the volume to the instance and wait until EC2 says `attached`; returns the
        device name. Attached to this instance already: its device."""
        vol, inst = self._volume_and_instance(region, ebs_id, ec2_id)
        held = holder(vol)
        if held is not None and held.get("InstanceId") != ec2_id:
            raise BackendError(
                f"volume {ebs_id} is {held.get('State')} to instance {held.get('InstanceId')}"
            )
        if held is None:
            zone = inst.get("Placement", {}).get("AvailabilityZone")
            if zone and vol.get("AvailabilityZone") != zone:
                raise BackendError(
                    f"volume {ebs_id} is in {vol.get('AvailabilityZone')} and instance {ec2_id} "
                    f"in {zone}: EBS attaches only within one availability zone"
                )
            used = [m["DeviceName"] for m in inst.get("BlockDeviceMappings", [])]
            self._attach(region, ebs_id, ec2_id, free_device(used))
        return self.wait_attached(region, ebs_id, ec2_id, timeout)

    def _volume_and_instance(
        self, region: str, ebs_id: str, ec2_id: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        vol = self.describe(region, ebs_id)
        if vol is None:
            raise BackendError(f"volume {ebs_id} not found in {region}")
        inst = self.ec2.describe(region, ec2_id)
        state = (inst or {}).get("State", {}).get("Name")
        if inst is None or state != "running":
            raise BackendError(f"instance {ec2_id} is {state or 'gone'}: cannot attach {ebs_id}")
        return vol, inst

    def _attach(self, region: str, ebs_id: str, ec2_id: str, device: str) -> None:
        try:
            self._client(region).attach_volume(VolumeId=ebs_id, InstanceId=ec2_id, Device=device)
        except ClientError as e:
            raise BackendError(
                f"attaching volume {ebs_id} to {ec2_id} as {device}: {describe_error(e)}"
            ) from e

    def wait_attached(self, region: str, ebs_id: str, ec2_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            vol = self.describe(region, ebs_id)
            held = holder(vol or {})
            if held is None or held.get("InstanceId") != ec2_id:
                raise BackendError(f"volume {ebs_id} is no longer attaching to {ec2_id}")
            if held.get("State") == "attached":
                return str(held["Device"])
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"volume {ebs_id} is still {held.get('State')} to {ec2_id} "
                    f"after {timeout:.0f} s"
                )
            self.sleep(self.poll)

    def detach(self, region: str, ebs_id: str, ec2_id: str, force: bool) -> None:
        """Ask EC2 to detach (not attached there: nothing to do)."""
        vol = self.describe(region, ebs_id)
        held = holder(vol or {})
        if held is None or held.get("InstanceId") != ec2_id:
            return
        if held.get("State") == "detaching" and not force:
            return  # asked already
        try:
            self._client(region).detach_volume(VolumeId=ebs_id, InstanceId=ec2_id, Force=force)
        except ClientError as e:
            if error_code(e) in NOT_ATTACHED | VOLUME_NOT_FOUND:
                return
            raise BackendError(
                f"detaching volume {ebs_id} from {ec2_id}: {describe_error(e)}"
            ) from e

    def is_detached(self, region: str, ebs_id: str, ec2_id: str) -> bool:
        vol = self.describe(region, ebs_id)
        return not any(
            a.get("InstanceId") == ec2_id and a.get("State") in HOLDING
            for a in (vol or {}).get("Attachments", [])
        )
