"""The AWS backend end to end: a real server configured through config.yml, moto's EC2 API
behind a fault-injecting proxy, instances that boot as SSH hosts, the real CLI.

Each test starts its own server, EC2 and hosts (`aws_world_factory` in conftest.py)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from ..harness import wait_until
from . import ec2_hosts
from .ec2_proxy import Fault
from .server_util import dump, job_submissions

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(ec2_hosts.available() is not None, reason=str(ec2_hosts.available())),
]

FLEET = """type: fleet
name: cloud
nodes: 0..2
backends: [aws]
{extra}"""


def task(name: str, command: str, extra: str = "") -> str:
    return (
        f"type: task\nname: {name}\ncommands:\n  - {json.dumps(command)}\n"
        "resources:\n  cpu: 2..\n  memory: 4GB..\n  disk: 30GB..\n" + extra
    )


def test_offers_a_fleet_that_grows_for_runs_and_shrinks_when_idle(aws_world_factory: Any) -> None:
    w = aws_world_factory()
    srv = w.srv
    # The server says which backends it configured, and the API shows it, secrets redacted.
    assert "aws (project main" in srv.log_tail()
    listed = srv.api("/api/project/main/backends/list").json()
    aws = next(b for b in listed if b["type"] == "aws")
    assert aws["status"] == "ok", aws
    assert "the-secret-key" not in json.dumps(listed)

    r = srv.cli("offer", "--backend", "aws", "--gpu", "A100", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    offers = json.loads(r.stdout)["offers"]
    assert offers and {o["instance"]["name"] for o in offers} == {"p4d.24xlarge"}
    assert {o["region"] for o in offers} == {ec2_hosts.REGION}  # only the configured region
    prices = [o["price"] for o in offers]
    assert prices == sorted(prices)

    extra = "idle_duration: 4s\ntags:\n  owner: alice\navailability_zones: [us-east-1a]\n"
    r = w.apply("fleet.dstack.yml", FLEET.format(extra=extra))
    assert r.returncode == 0, r.stdout + r.stderr
    assert w.fleet("cloud")["instances"] == []  # nodes.min is 0: nothing until a run needs it

    for name in ("grow-a", "grow-b"):
        r = w.apply(f"{name}.dstack.yml", task(name, f"echo hello-from-{name}; sleep 8"), "-d")
        assert r.returncode == 0, r.stdout + r.stderr
    for name in ("grow-a", "grow-b"):
        srv.wait_status(name, "running", timeout=120)
    live = w.wait_live_ec2(2)
    assert {i["InstanceType"] for i in live} == {"t3.medium"}  # the cheapest that fits
    tags = {t["Key"]: t["Value"] for t in live[0]["Tags"]}
    assert tags["team"] == "ml" and tags["dstack_project"] == "main"  # config.yml's tags
    assert tags["owner"] == "alice"  # the fleet's
    assert {i["Placement"]["AvailabilityZone"] for i in live} == {"us-east-1a"}
    assert len(w.fleet("cloud")["instances"]) == 2
    for name in ("grow-a", "grow-b"):
        srv.wait_status(name, "done", timeout=60)
        assert f"hello-from-{name}" in srv.cli("logs", name).stdout
    # Idle past idle_duration: terminated, in EC2 too; nodes.min 0 lets the fleet go empty.
    wait_until(lambda: w.fleet("cloud")["instances"] == [], timeout=60, what="fleet to shrink")
    w.wait_live_ec2(0, timeout=30)
    assert "IDLE_TIMEOUT" in w.events()
    assert not w.booter.errors


def test_no_capacity_on_the_first_offer_uses_the_second(aws_world_factory: Any) -> None:
    w = aws_world_factory()
    w.proxy.add(
        Fault(
            "RunInstances",
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient t3.medium capacity",
            when={"InstanceType": "t3.medium"},
        )
    )
    assert w.apply("fleet.dstack.yml", FLEET.format(extra="")).returncode == 0
    r = w.apply("nocap.dstack.yml", task("nocap", "echo ran-on-the-second"), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr + w.srv.log_tail()
    assert "ran-on-the-second" in r.stdout
    (inst,) = w.moto.instances()
    assert inst["InstanceType"] == "m5.large"
    ps = w.srv.cli("ps", "-a", "-v").stdout
    assert "t3.medium" in ps and "m5.large" in ps, ps
    assert "InsufficientInstanceCapacity" in ps, ps
    events = w.events()
    assert "t3.medium" in events and "trying the next one" in events, events


def test_a_reclaimed_spot_instance_interrupts_the_job_and_retry_resubmits(
    aws_world_factory: Any,
) -> None:
    w = aws_world_factory()
    assert w.apply("fleet.dstack.yml", FLEET.format(extra="spot_policy: spot\n")).returncode == 0
    extra = "spot_policy: spot\nretry:\n  on_events: [interruption]\n  duration: 10m\n"
    r = w.apply("spot.dstack.yml", task("spot", "sleep 600", extra), "-d")
    assert r.returncode == 0, r.stdout + r.stderr
    w.srv.wait_status("spot", "running", timeout=120)
    (first,) = w.wait_live_ec2(1)
    assert first.get("InstanceLifecycle") == "spot"
    # EC2 reclaims the instance: gone from EC2, its host dead.
    w.moto.client().terminate_instances(InstanceIds=[first["InstanceId"]])

    def resubmitted() -> Any:
        subs = job_submissions(w.srv, "spot")
        return len(subs) >= 2 and subs

    subs = wait_until(resubmitted, timeout=120, what="a resubmitted job")
    assert subs[0]["termination_reason"] == "interrupted_by_no_capacity", dump(subs)
    w.srv.wait_status("spot", "running", timeout=120)
    (second,) = w.wait_live_ec2(1)
    assert second["InstanceId"] != first["InstanceId"]
    w.srv.cli("stop", "spot", "-x", "-y")
    w.srv.wait_status("spot", "terminated", "aborted", "failed", "done", timeout=60)


def test_a_crash_after_run_instances_leaves_one_instance_and_no_orphan(
    aws_world_factory: Any,
) -> None:
    w = aws_world_factory({"DSTACK_SERVER_FAILPOINT": "aws_after_run_instances"})
    assert w.apply("fleet.dstack.yml", FLEET.format(extra="")).returncode == 0
    r = w.apply("crash.dstack.yml", task("crash", "echo survived-the-crash"), "-d")
    assert r.returncode == 0, r.stdout + r.stderr
    assert w.srv.proc is not None
    try:
        w.srv.proc.wait(timeout=60)  # the failpoint ends the server right after RunInstances
    except subprocess.TimeoutExpired:
        raise AssertionError("the failpoint never fired: " + w.srv.log_tail()) from None
    assert len(w.live_ec2()) == 1
    w.srv.extra_env.pop("DSTACK_SERVER_FAILPOINT")
    w.srv.start()
    w.srv.wait_status("crash", "done", timeout=120)
    assert "survived-the-crash" in w.srv.cli("logs", "crash").stdout
    everything = w.moto.instances()
    assert len(everything) == 1, dump(everything)  # the create after restart found the first


def test_a_host_that_never_boots_times_out_and_is_terminated(aws_world_factory: Any) -> None:
    w = aws_world_factory({"DSTACK_SERVER_AWS_PROVISIONING_TIMEOUT": "6"})
    w.booter.hold_all = True
    fleet = FLEET.replace("nodes: 0..2", "nodes: 1").format(extra="")
    assert w.apply("fleet.dstack.yml", fleet, timeout=90).returncode == 0
    out = w.events()
    assert "PROVISIONING_TIMEOUT" in out and "the agent was never installed" in out, out
    wait_until(
        lambda: all(i["State"]["Name"] == "terminated" for i in w.moto.instances()),
        timeout=30,
        what="EC2 to terminate the instance",
    )
    # Without `retry` the fleet does not replace a host that cannot boot over and over: it
    # says why it stopped.
    f = wait_until(
        lambda: (f := w.fleet("cloud"))["status_message"] and f, timeout=30, what="a message"
    )
    assert "does not cover error" in f["status_message"], f
    assert len(w.moto.instances()) == 1


def test_a_failing_terminate_is_retried_and_never_shown_done_early(aws_world_factory: Any) -> None:
    w = aws_world_factory()
    fleet = FLEET.replace("nodes: 0..2", "nodes: 1")
    assert w.apply("fleet.dstack.yml", fleet.format(extra="")).returncode == 0
    wait_until(
        lambda: [i["status"] for i in w.fleet("cloud")["instances"]] == ["idle"],
        timeout=120,
        what="the fleet's instance to be up",
    )
    fault = w.proxy.add(
        Fault("TerminateInstances", "UnauthorizedOperation", "not allowed right now", times=3)
    )
    assert w.srv.cli("fleet", "delete", "cloud", "-y").returncode == 0

    def check() -> Any:
        running = bool(w.live_ec2())
        insts = w.fleet_instances_or_none()
        if running and insts is not None:
            statuses = {i["status"] for i in insts}
            assert "terminated" not in statuses, statuses
        return fault.hits >= 3 and not running

    wait_until(check, timeout=90, what="terminate to succeed after failing")
    assert "UnauthorizedOperation" in w.events() or fault.hits >= 3


def test_an_instance_no_row_owns_is_swept(aws_world_factory: Any) -> None:
    """An EC2 instance tagged for this project with an instance id the server does not know
    (a create whose row was lost) is terminated by the inventory sweeper, with an event; an
    untagged one is never touched."""
    w = aws_world_factory()
    ec2 = w.moto.client()
    image = ec2.describe_images(Owners=[ec2_hosts.AMI_OWNER])["Images"][0]["ImageId"]

    def launch(tags: list[dict[str, str]]) -> str:
        spec = [{"ResourceType": "instance", "Tags": tags}] if tags else []
        res = ec2.run_instances(
            ImageId=image, InstanceType="t3.medium", MinCount=1, MaxCount=1,
            TagSpecifications=spec,
        )  # fmt: skip
        return res["Instances"][0]["InstanceId"]

    orphan = launch(
        [
            {"Key": "dstack_project", "Value": "main"},
            {"Key": "dstack_instance_id", "Value": "4f1e7c0e-0000-4000-8000-000000000000"},
        ]
    )
    mine = launch([{"Key": "Name", "Value": "not-dstack"}])

    def state(ec2_id: str) -> str:
        res = ec2.describe_instances(InstanceIds=[ec2_id])
        return res["Reservations"][0]["Instances"][0]["State"]["Name"]

    wait_until(lambda: state(orphan) == "terminated", timeout=60, what="the orphan to be swept")
    assert state(mine) == "running"
    assert orphan in w.events()
