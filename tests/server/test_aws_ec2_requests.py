"""What the AWS backend asks EC2 for, checked against botocore's own model of the EC2 API
(its Stubber refuses a parameter the real API does not have). Covers what moto does not
emulate: placement groups, capacity reservations and spot options reach RunInstances as
written here, never run against the real EC2."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from dstack.models.backends import AWSBackendConfig
from dstack.server.backends.aws.ec2 import EC2, LaunchSpec


@pytest.fixture
def ec2() -> EC2:
    cfg = AWSBackendConfig.model_validate(
        {
            "creds": {"type": "access_key", "access_key": "k", "secret_key": "s"},
            "regions": ["us-east-1"],
            "vpc_name": "ml",
            "public_ips": True,
            "tags": {"team": "ml"},
        }
    )
    return EC2("main", cfg)


def spec(**kw: Any) -> LaunchSpec:
    base: dict[str, Any] = dict(
        instance_id="i-server-1",
        name="gpu-fleet-0",
        region="us-east-1",
        instance_type="p4d.24xlarge",
        image=None,
        gpu=True,
        disk_gb=200,
        spot=True,
        max_price=12.5,
        public_key="ssh-ed25519 AAAA test",
        placement_group="dstack-main-gpu-fleet",
        reservation="cr-0123456789abcdef0",
    )
    base.update(kw)
    return LaunchSpec(**base)


def test_run_instances_carries_spot_placement_reservation(ec2: EC2) -> None:
    client = ec2.client("ec2", "us-east-1")
    s = Stubber(client)
    s.add_response("describe_vpcs", {"Vpcs": [{"VpcId": "vpc-1", "CidrBlock": "10.0.0.0/16"}]})
    s.add_response(
        "describe_subnets",
        {"Subnets": [{"SubnetId": "subnet-1", "VpcId": "vpc-1", "AvailabilityZone": "us-east-1a"}]},
    )
    s.add_response("describe_security_groups", {"SecurityGroups": [{"GroupId": "sg-1"}]})
    s.add_response(
        "describe_images",
        {"Images": [{"ImageId": "ami-new", "CreationDate": "2026-01-02"},
                    {"ImageId": "ami-old", "CreationDate": "2025-01-02"}]},
    )  # fmt: skip
    s.add_response("describe_key_pairs", {"KeyPairs": [{"KeyName": "k"}]})
    s.add_response(
        "create_placement_group",
        {},
        {"GroupName": "dstack-main-gpu-fleet", "Strategy": "cluster", "TagSpecifications": ANY},
    )
    s.add_response(
        "run_instances",
        {"Instances": [{"InstanceId": "i-0abc"}]},
        {
            "ImageId": "ami-new",
            "InstanceType": "p4d.24xlarge",
            "MinCount": 1,
            "MaxCount": 1,
            "KeyName": ANY,
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "SubnetId": "subnet-1",
                    "Groups": ["sg-1"],
                    "AssociatePublicIpAddress": True,
                }
            ],
            "BlockDeviceMappings": [
                {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 200, "VolumeType": "gp3"}}
            ],
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [
                        {"Key": "team", "Value": "ml"},
                        {"Key": "Name", "Value": "gpu-fleet-0"},
                        {"Key": "dstack_project", "Value": "main"},
                        {"Key": "dstack_instance_id", "Value": "i-server-1"},
                    ],
                }
            ],
            "InstanceMarketOptions": {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                    "MaxPrice": "12.5000",
                },
            },
            "Placement": {"GroupName": "dstack-main-gpu-fleet"},
            "CapacityReservationSpecification": {
                "CapacityReservationTarget": {"CapacityReservationId": "cr-0123456789abcdef0"}
            },
        },
    )
    with s:
        out = ec2.run(spec(image=ec2.image_for(True)))
    assert out["InstanceId"] == "i-0abc"
    s.assert_no_pending_responses()


def test_capacity_refusal_is_no_capacity(ec2: EC2) -> None:
    from dstack.server.backends.base import BackendError, NoCapacityError

    client = ec2.client("ec2", "us-east-1")
    s = Stubber(client)
    s.add_response("describe_vpcs", {"Vpcs": [{"VpcId": "vpc-1"}]})
    s.add_response("describe_subnets", {"Subnets": [{"SubnetId": "subnet-1", "VpcId": "vpc-1"}]})
    s.add_response("describe_security_groups", {"SecurityGroups": [{"GroupId": "sg-1"}]})
    s.add_response("describe_images", {"Images": [{"ImageId": "ami-1"}]})
    s.add_response("describe_key_pairs", {"KeyPairs": [{"KeyName": "k"}]})
    s.add_client_error("run_instances", "InsufficientInstanceCapacity", "none left in us-east-1a")
    s.add_response("describe_vpcs", {"Vpcs": [{"VpcId": "vpc-1"}]})
    s.add_response("describe_subnets", {"Subnets": [{"SubnetId": "subnet-1", "VpcId": "vpc-1"}]})
    s.add_response("describe_security_groups", {"SecurityGroups": [{"GroupId": "sg-1"}]})
    s.add_response("describe_images", {"Images": [{"ImageId": "ami-1"}]})
    s.add_response("describe_key_pairs", {"KeyPairs": [{"KeyName": "k"}]})
    s.add_client_error("run_instances", "InvalidParameterValue", "bad disk")
    plain = spec(image=ec2.image_for(False), spot=False, placement_group=None, reservation=None)
    with s:
        with pytest.raises(NoCapacityError, match="InsufficientInstanceCapacity"):
            ec2.run(plain)
        with pytest.raises(BackendError, match="InvalidParameterValue") as e:
            ec2.run(plain)
        assert not isinstance(e.value, NoCapacityError)
