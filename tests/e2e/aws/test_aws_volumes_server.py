"""EBS volumes end to end: a real server with the AWS backend against moto, instances that boot
as SSH hosts, and the harness's "disks" (an attached EBS volume is a real mount on the host).

A task writes a checkpoint to a volume; once its instance is gone, a second run on a new
instance reads it. Two runs wanting the volume run one after the other. Deleting the volume
while a run uses it is refused; once idle past `auto_cleanup_duration` it is deleted, in EC2
too."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from ..harness import wait_until
from . import ec2_hosts

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(ec2_hosts.available() is not None, reason=str(ec2_hosts.available())),
]

FLEET = "type: fleet\nname: cloud\nnodes: 0..2\nbackends: [aws]\nidle_duration: 1s\n"
VOLUME = (
    "type: volume\nname: ckpt\nbackend: aws\nregion: us-east-1\nsize: 10GB\n"
    "auto_cleanup_duration: 6s\n"
)


def task(name: str, command: str, path: str) -> str:
    return (
        f"type: task\nname: {name}\ncommands:\n  - {json.dumps(command)}\n"
        "resources:\n  cpu: 2..\n  memory: 4GB..\n  disk: 30GB..\n"
        f"volumes:\n  - ckpt:{path}\n"
    )


def ebs_volumes(w: Any) -> list[dict[str, Any]]:
    return w.moto.client().describe_volumes(Filters=[{"Name": "tag:Name", "Values": ["ckpt"]}])[
        "Volumes"
    ]


def test_a_checkpoint_outlives_its_instance(aws_world_factory: Any) -> None:
    w = aws_world_factory()
    srv = w.srv
    # The process runtime has no container: the path is a link the agent makes (in /tmp,
    # writable by the host's user), and $DSTACK_VOLUME_CKPT_PATH is the real directory.
    path = f"/tmp/ckpt-{secrets.token_hex(3)}"
    assert w.apply("fleet.dstack.yml", FLEET).returncode == 0
    r = w.apply("vol.dstack.yml", VOLUME)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(
        lambda: (
            srv.api("/api/project/main/volumes/get", {"name": "ckpt"}).json()["status"] == "active"
        ),
        timeout=60,
        what="the volume to be active",
    )
    (ebs,) = ebs_volumes(w)
    assert ebs["Size"] == 10

    write = "echo step-42 > $DSTACK_VOLUME_CKPT_PATH/step && cat " + path + "/step"
    r = w.apply("w.dstack.yml", task("writer", write, path), timeout=240)
    harness = f"harness: {w.booter.errors} {w.booter.disks.log}"
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr + harness
    assert "step-42" in r.stdout
    assert (w.booter.disks.disk_of("ckpt") / "step").read_text().strip() == "step-42"
    first = {i["InstanceId"] for i in w.moto.instances()}
    # The writer's instance goes (idle_duration 1s): the reader gets a new one.
    w.wait_live_ec2(0, timeout=60)

    r = w.apply(
        "r.dstack.yml", task("reader", "sleep 6; cat $DSTACK_VOLUME_CKPT_PATH/step", path), "-d"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = w.apply("r2.dstack.yml", task("reader2", "cat $DSTACK_VOLUME_CKPT_PATH/step", path), "-d")
    assert r.returncode == 0, r.stdout + r.stderr
    srv.wait_status("reader", "running", timeout=120)
    # In use: refused, naming what uses it.
    r = srv.cli("volume", "delete", "ckpt", "-y")
    assert r.returncode != 0 and "reader" in (r.stdout + r.stderr), r.stdout + r.stderr
    # reader2 wants the same volume: it waits for reader, never fails.
    assert srv.run("reader2")["status"] in ("submitted", "pending", "provisioning")
    srv.wait_status("reader", "done", timeout=90)
    srv.wait_status("reader2", "done", timeout=180)
    for name in ("reader", "reader2"):
        assert "step-42" in srv.cli("logs", name).stdout
    second = {i["InstanceId"] for i in w.moto.instances()} - first
    assert second, "the reader ran on a new instance"

    # Idle past auto_cleanup_duration: deleted, and gone from EC2.
    wait_until(
        lambda: srv.api("/api/project/main/volumes/get", {"name": "ckpt"}).status_code == 400,
        timeout=90,
        what="the idle volume to be cleaned up",
    )
    wait_until(
        lambda: all(v["State"] in ("deleting", "deleted") for v in ebs_volumes(w)),
        timeout=30,
        what="EC2 to delete the volume",
    )
    assert not w.booter.errors
