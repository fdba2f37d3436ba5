"""The EC2 calls of the AWS backend, synchronous boto3 (the backend runs them in threads).

Everything the backend creates carries two tags: `dstack_project` (the project's name) and,
on instances, `dstack_instance_id` (the server's instance id). The tag is the only key
idempotency rests on: a create repeated after a crash finds the first instance by it, and
terminate and the inventory look instances up by it (a `ClientToken` is not enough: it expires
and emulators ignore it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dstack.models.backends import AWSBackendConfig, AWSOSImage
from dstack.server.backends.base import BackendError, NoCapacityError

TAG_INSTANCE = "dstack_instance_id"
TAG_PROJECT = "dstack_project"
LIVE_STATES = ("pending", "running", "stopping", "stopped")
GONE_STATES = ("shutting-down", "terminated")
# Errors that mean "this offer, not now": the job tries its next offer.
CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InstanceLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "Unsupported",
        "InsufficientCapacity",
        "VcpuLimitExceeded",
        "ReservationCapacityExceeded",
        "InsufficientReservedInstanceCapacity",
    }
)
NOT_FOUND = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
DEFAULT_IMAGES = {
    "cpu": AWSOSImage(name="ubuntu/images/hvm-ssd*/ubuntu-*-amd64-server-*", owner="099720109477"),
    "nvidia": AWSOSImage(name="Deep Learning*Ubuntu*", owner="amazon"),
}


def describe_error(e: Exception) -> str:
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return str(e) or type(e).__name__


def error_code(e: Exception) -> str:
    return e.response.get("Error", {}).get("Code", "") if isinstance(e, ClientError) else ""


@dataclass(frozen=True)
class LaunchSpec:
    """One instance to run, as the backend resolved it from the offer and the configuration."""

    instance_id: str  # the server's id, the tag
    name: str
    region: str
    instance_type: str
    image: AWSOSImage
    gpu: bool
    disk_gb: int
    spot: bool
    max_price: float | None
    public_key: str
    availability_zones: tuple[str, ...] = ()
    placement_group: str | None = None
    reservation: str | None = None
    tags: tuple[tuple[str, str], ...] = ()  # the fleet's and the run's `tags`


class EC2:
    """The backend's EC2 access for one project: clients per region, and the resources every
    instance needs (key pair, security group), made on first use and found again after."""

    def __init__(self, project: str, config: AWSBackendConfig) -> None:
        self.project = project
        self.config = config
        creds = config.creds
        kwargs: dict[str, Any] = {}
        if creds.type == "access_key":
            kwargs = {
                "aws_access_key_id": creds.access_key,
                "aws_secret_access_key": creds.secret_key,
            }
        self.session = boto3.session.Session(**kwargs)
        self._clients: dict[tuple[str, str], Any] = {}
        self._boto_config = Config(retries={"max_attempts": 4, "mode": "standard"})

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = self.session.client(
                service, region_name=region, config=self._boto_config
            )
        return self._clients[key]

    def check(self, region: str) -> str:
        """Who the credentials belong to (raises BackendError when they do not work)."""
        try:
            ident = self.client("sts", region).get_caller_identity()
        except (ClientError, BotoCoreError) as e:
            raise BackendError(f"AWS credentials do not work: {describe_error(e)}") from e
        return str(ident.get("Account", ""))

    # -- instances ----------------------------------------------------------------------------

    def find(self, region: str, instance_id: str) -> dict[str, Any] | None:
        """The live EC2 instance tagged with the server's instance id, if any."""
        ec2 = self.client("ec2", region)
        res = ec2.describe_instances(
            Filters=[
                {"Name": f"tag:{TAG_INSTANCE}", "Values": [instance_id]},
                {"Name": f"tag:{TAG_PROJECT}", "Values": [self.project]},
                {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
            ]
        )
        found = [i for r in res.get("Reservations", []) for i in r.get("Instances", [])]
        return found[0] if found else None

    def describe(self, region: str, ec2_id: str) -> dict[str, Any] | None:
        """The instance by its EC2 id; None when EC2 no longer knows it."""
        try:
            res = self.client("ec2", region).describe_instances(InstanceIds=[ec2_id])
        except ClientError as e:
            if error_code(e) in NOT_FOUND:
                return None
            raise
        found = [i for r in res.get("Reservations", []) for i in r.get("Instances", [])]
        return found[0] if found else None

    def run(self, spec: LaunchSpec) -> dict[str, Any]:
        ec2 = self.client("ec2", spec.region)
        subnet = self.subnet(spec.region, spec.availability_zones)
        group = self.security_group(spec.region, subnet["VpcId"])
        params: dict[str, Any] = {
            "ImageId": self.image_id(spec.region, spec.image),
            "InstanceType": spec.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "KeyName": self.key_pair(spec.region, spec.public_key),
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "SubnetId": subnet["SubnetId"],
                    "Groups": [group],
                    "AssociatePublicIpAddress": self.config.public_ips,
                }
            ],
            "BlockDeviceMappings": [
                {
                    "DeviceName": "/dev/sda1",
                    "Ebs": {"VolumeSize": spec.disk_gb, "VolumeType": "gp3"},
                }
            ],
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": self._tags(spec.name, spec.instance_id, dict(spec.tags)),
                }
            ],
        }
        if spec.spot:
            options: dict[str, Any] = {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            }
            if spec.max_price is not None:
                options["MaxPrice"] = f"{spec.max_price:.4f}"
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
        if spec.placement_group:
            params["Placement"] = {
                "GroupName": self.placement_group(spec.region, spec.placement_group)
            }
        if spec.reservation:
            params["CapacityReservationSpecification"] = {
                "CapacityReservationTarget": {"CapacityReservationId": spec.reservation}
            }
        try:
            res = ec2.run_instances(**params)
        except ClientError as e:
            msg = f"{spec.instance_type} in {spec.region}: {describe_error(e)}"
            if error_code(e) in CAPACITY_ERRORS:
                raise NoCapacityError(msg) from e
            raise BackendError(msg) from e
        return res["Instances"][0]

    def terminate(self, region: str, ec2_ids: list[str]) -> None:
        if not ec2_ids:
            return
        try:
            self.client("ec2", region).terminate_instances(InstanceIds=ec2_ids)
        except ClientError as e:
            if error_code(e) not in NOT_FOUND:
                raise BackendError(f"terminating {', '.join(ec2_ids)}: {describe_error(e)}") from e

    def tagged(self, region: str) -> list[dict[str, Any]]:
        """Every live instance of this project's that carries a server instance id."""
        ec2 = self.client("ec2", region)
        out: list[dict[str, Any]] = []
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{TAG_PROJECT}", "Values": [self.project]},
                {"Name": "tag-key", "Values": [TAG_INSTANCE]},
                {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
            ]
        )
        for page in pages:
            for r in page.get("Reservations", []):
                out.extend(r.get("Instances", []))
        return out

    # -- what every instance needs ------------------------------------------------------------

    def _tags(
        self, name: str, instance_id: str | None = None, extra: dict[str, str] | None = None
    ) -> list[dict[str, str]]:
        tags = {
            **(self.config.tags or {}),
            **(extra or {}),
            "Name": name,
            TAG_PROJECT: self.project,
        }
        if instance_id:
            tags[TAG_INSTANCE] = instance_id
        return [{"Key": k, "Value": str(v)} for k, v in tags.items()]

    def key_pair(self, region: str, public_key: str) -> str:
        """The project's key pair, named by the key's hash: a new project key gets a new pair."""
        digest = hashlib.sha256(public_key.encode()).hexdigest()[:12]
        name = f"dstack-{self.project}-{digest}"
        ec2 = self.client("ec2", region)
        try:
            ec2.describe_key_pairs(KeyNames=[name])
            return name
        except ClientError as e:
            if error_code(e) != "InvalidKeyPair.NotFound":
                raise BackendError(f"key pair {name}: {describe_error(e)}") from e
        ec2.import_key_pair(
            KeyName=name,
            PublicKeyMaterial=public_key.encode(),
            TagSpecifications=[{"ResourceType": "key-pair", "Tags": self._tags(name)}],
        )
        return name

    def placement_group(self, region: str, name: str) -> str:
        """A cluster placement group per cluster fleet: its instances share a network spine.
        Created on first use; an existing one (a duplicate) is the one wanted."""
        try:
            self.client("ec2", region).create_placement_group(
                GroupName=name,
                Strategy="cluster",
                TagSpecifications=[{"ResourceType": "placement-group", "Tags": self._tags(name)}],
            )
        except ClientError as e:
            if error_code(e) != "InvalidPlacementGroup.Duplicate":
                raise BackendError(f"placement group {name}: {describe_error(e)}") from e
        return name

    def vpc_id(self, region: str) -> str:
        ec2 = self.client("ec2", region)
        cfg = self.config
        if cfg.vpc_ids and region in cfg.vpc_ids:
            return cfg.vpc_ids[region]
        if cfg.vpc_name:
            res = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [cfg.vpc_name]}])
            if res.get("Vpcs"):
                return str(res["Vpcs"][0]["VpcId"])
            if not cfg.uses_default_vpcs():
                raise BackendError(f"no VPC named {cfg.vpc_name} in {region}")
        if not cfg.uses_default_vpcs():
            raise BackendError(f"no VPC is configured for {region} and default_vpcs is off")
        res = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
        if not res.get("Vpcs"):
            raise BackendError(f"{region} has no default VPC; set vpc_name or vpc_ids")
        return str(res["Vpcs"][0]["VpcId"])

    def subnet(self, region: str, zones: tuple[str, ...] = ()) -> dict[str, Any]:
        vpc = self.vpc_id(region)
        filters = [{"Name": "vpc-id", "Values": [vpc]}]
        if zones:
            filters.append({"Name": "availability-zone", "Values": list(zones)})
        subnets = self.client("ec2", region).describe_subnets(Filters=filters).get("Subnets", [])
        if not subnets:
            where = f" in {', '.join(zones)}" if zones else ""
            raise BackendError(f"VPC {vpc} in {region} has no subnet{where}")
        # A stable choice: the same zone each time, so a cluster's instances land together.
        return sorted(subnets, key=lambda s: (s.get("AvailabilityZone", ""), s["SubnetId"]))[0]

    def security_group(self, region: str, vpc: str) -> str:
        """The project's group in this VPC: SSH in (the server's only way to the host) and
        anything between the project's own instances (multi-node jobs); nothing else."""
        ec2 = self.client("ec2", region)
        name = f"dstack-{self.project}"
        res = ec2.describe_security_groups(
            Filters=[
                {"Name": "group-name", "Values": [name]},
                {"Name": "vpc-id", "Values": [vpc]},
            ]
        )
        if res.get("SecurityGroups"):
            return str(res["SecurityGroups"][0]["GroupId"])
        created = ec2.create_security_group(
            GroupName=name,
            Description=f"dstack project {self.project}: SSH from the server only",
            VpcId=vpc,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": self._tags(name)}],
        )
        group = str(created["GroupId"])
        ec2.authorize_security_group_ingress(
            GroupId=group,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [{"CidrIp": self.ssh_source(region, vpc)}],
                },
                {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]},
            ],
        )
        return group

    def ssh_source(self, region: str, vpc: str) -> str:
        """Where SSH may come from: the VPC itself when instances have no public address (the
        server reaches them from inside), else anywhere (key login only)."""
        if self.config.public_ips:
            return "0.0.0.0/0"
        res = self.client("ec2", region).describe_vpcs(VpcIds=[vpc])
        return str(res["Vpcs"][0]["CidrBlock"])

    def image_id(self, region: str, image: AWSOSImage) -> str:
        res = self.client("ec2", region).describe_images(
            Owners=[image.owner], Filters=[{"Name": "name", "Values": [image.name]}]
        )
        images = sorted(res.get("Images", []), key=lambda i: i.get("CreationDate", ""))
        if not images:
            raise BackendError(
                f"no AMI named {image.name!r} owned by {image.owner} in {region}; "
                "set os_images in the backend's configuration"
            )
        return str(images[-1]["ImageId"])

    def image_for(self, gpu: bool) -> AWSOSImage:
        images = self.config.os_images
        kind = "nvidia" if gpu else "cpu"
        chosen = getattr(images, kind, None) if images else None
        return chosen or DEFAULT_IMAGES[kind]
