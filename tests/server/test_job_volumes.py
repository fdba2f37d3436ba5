"""Volumes in runs, end to end on the server with test doubles (never presented as real
backends): a cloud whose network volumes attach and detach on command, and an agent that
records the start specs it is sent. The job reconciler is driven pass by pass."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from dstack.errors import ServerClientError
from dstack.models.instances import InstanceType, Resources
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.models.runs import RunSpec
from dstack.models.wire import utcnow
from dstack.server.backends.base import (
    BackendError,
    Capabilities,
    Host,
    VolumeAttachment,
    VolumeSpec,
)
from dstack.server.db import tables as t
from dstack.server.reconcilers.host_jobs import HostJobs
from dstack.server.services import runs as runs_service

from .test_backend_fleets import FakeCloud, World


class VolumeCloud(FakeCloud):
    """Attaches as `/dev/sd<n>`; detaches when `detach_done` says so; `attach_error` fails."""

    def __init__(self) -> None:
        super().__init__([])
        self.capabilities = Capabilities(volumes=True)
        self.calls: list[tuple[str, str, str, bool]] = []
        self.detach_done = True
        self.attach_error: str | None = None

    async def attach_volume(self, volume: VolumeSpec, host: Host) -> VolumeAttachment:
        self.calls.append(("attach", volume.name, host.name, False))
        if self.attach_error:
            raise BackendError(self.attach_error)
        return VolumeAttachment(device="/dev/sdf", data={"host": host.name})

    async def detach_volume(self, volume: VolumeSpec, host: Host, force: bool = False) -> None:
        self.calls.append(("detach", volume.name, host.name, force))

    async def is_volume_detached(self, volume: VolumeSpec, host: Host) -> bool:
        return self.detach_done


class FakeAgent:
    """One host's agent: jobs started stay running until the test finishes them."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.specs = specs

    async def start_job(self, spec: dict[str, Any], code: bytes) -> dict[str, Any]:
        self.specs.append(spec)
        self.jobs[spec["id"]] = {"id": spec["id"], "status": "running"}
        return self.jobs[spec["id"]]

    async def list_jobs(self) -> list[dict[str, Any]]:
        return list(self.jobs.values())

    async def stop_job(self, job_id: str, abort: bool = False, **kw: Any) -> dict[str, Any]:
        self.jobs[job_id].update(status="terminated")
        return self.jobs[job_id]

    async def poll_logs(self, job_id: str, offset: int = 0) -> dict[str, Any]:
        return {"entries": [], "next_offset": offset}

    async def remove_job(self, job_id: str) -> dict[str, Any]:
        self.jobs.pop(job_id, None)
        return {}


class Agents:
    def __init__(self) -> None:
        self.by_instance: dict[str, FakeAgent] = {}
        self.specs: list[dict[str, Any]] = []

    def client(self, inst: t.Instance) -> FakeAgent:
        return self.by_instance.setdefault(inst.id, FakeAgent(self.specs))


def hw() -> InstanceOfferWithAvailability:
    return InstanceOfferWithAvailability(
        backend="fake",
        instance=InstanceType(name="m", resources=Resources(cpus=8, memory_mib=32768)),
        region="r1",
        price=1.0,
        availability=InstanceAvailability.AVAILABLE,
    )


class VWorld(World):
    async def setup(self, hosts: int = 2) -> VWorld:
        await self.start()
        self.agents = Agents()
        self.jobs.agents = self.agents
        self.jobs.host_jobs = HostJobs(max_age=0)
        now = utcnow()
        async with self.ctx.db.session() as s:
            spec = {"configuration": {"type": "fleet", "name": "f", "nodes": 0}}
            fleet = t.Fleet(
                id=str(uuid.uuid4()), project_id=self.project.id, name="f", status="active",
                spec=json.dumps(spec), created_at=now, last_processed_at=now,
            )  # fmt: skip
            s.add(fleet)
            await s.flush()
            self.fleet_id = fleet.id
            self.hosts = []
            for n in range(hosts):
                inst = t.Instance(
                    id=str(uuid.uuid4()), project_id=self.project.id, fleet_id=fleet.id,
                    instance_num=n, name=f"f-{n}", backend="fake", region="r1", status="idle",
                    offer=hw().model_dump_json(), hostname=f"10.0.0.{n}",
                    host_info=json.dumps({"addresses": [f"10.0.0.{n}"]}), created_at=now,
                    last_processed_at=now,
                )  # fmt: skip
                s.add(inst)
                self.hosts.append(inst.id)
            await s.commit()
        return self

    async def volume(self, name: str, **kw: Any) -> str:
        now = utcnow()
        fields = {"backend": "fake", "region": "r1", "status": "active", **kw}
        async with self.ctx.db.session() as s:
            v = t.Volume(
                id=str(uuid.uuid4()), project_id=self.project.id, user_id=self.user.id,
                name=name, configuration="{}", created_at=now, last_processed_at=now, **fields,
            )  # fmt: skip
            s.add(v)
            await s.commit()
            return v.id

    async def job(self, run: str) -> t.Job:
        return (await self.rows(t.Job, run_name=run))[0]

    async def finish_on_agent(self, run: str) -> None:
        job = await self.job(run)
        self.agents.by_instance[job.instance_id].jobs[job.id]["status"] = "done"


def vscenario(tmp_path: Path, body: Any, hosts: int = 2) -> VolumeCloud:
    cloud = VolumeCloud()

    async def main() -> None:
        w = await VWorld(tmp_path, cloud).setup(hosts)
        try:
            await body(w)
        finally:
            await w.ctx.db.close()

    asyncio.run(main())
    return cloud


def task(volumes: list[Any], **kw: Any) -> dict[str, Any]:
    return {"type": "task", "commands": ["true"], "volumes": volumes, **kw}


def test_network_volume_attached_before_start_and_detached_after(tmp_path: Path) -> None:
    async def body(w: VWorld) -> None:
        vid = await w.volume("data")
        await w.run(task(["data:/data", "/srv/cache:/cache:ro"]), name="ra")
        await w.step(w.jobs)  # placed; then, in the same pass, attached and started
        job = await w.job("ra")
        assert job.status == "running"
        assert json.loads(job.volumes)[0]["volume_id"] == vid
        assert w.cloud.calls == [("attach", "data", job_name_of(w, job), False)]
        sent = w.agents.specs[0]["volumes"]
        assert sent == [
            {"kind": "network", "name": "data", "device": "/dev/sdf", "path": "/data",
             "read_only": False, "device_aliases": []},
            {"kind": "instance", "instance_path": "/srv/cache", "path": "/cache",
             "optional": False, "read_only": True},
        ]  # fmt: skip
        (att,) = await w.rows(t.VolumeAttachment)
        assert (att.status, att.device, att.job_id) == ("attached", "/dev/sdf", job.id)
        await w.finish_on_agent("ra")
        w.cloud.detach_done = False
        await w.step(w.jobs)  # running -> terminating
        await w.step(w.jobs)  # detach asked, not done yet: still terminating
        assert (await w.job("ra")).status == "terminating"
        assert (await w.rows(t.VolumeAttachment))[0].status == "detaching"
        w.cloud.detach_done = True
        await w.step(w.jobs)
        assert (await w.job("ra")).status == "done"
        assert (await w.rows(t.VolumeAttachment))[0].status == "detached"
        assert (await w.rows(t.Volume))[0].last_used_at is not None

    cloud = vscenario(tmp_path, body)
    assert [c[0] for c in cloud.calls].count("detach") >= 1


def job_name_of(w: VWorld, job: t.Job) -> str:
    return f"f-{w.hosts.index(job.instance_id)}"


def test_second_run_queues_with_the_reason_while_the_volume_is_attached(tmp_path: Path) -> None:
    async def body(w: VWorld) -> None:
        await w.volume("data")
        await w.run(task(["data:/data"]), name="first")
        await w.step(w.jobs)
        await w.step(w.jobs)
        first = await w.job("first")
        # The first job's host takes no more jobs: the second could only go to the other host.
        async with w.ctx.db.session() as s:
            await s.execute(update(t.Job).where(t.Job.id == first.id).values(used_blocks=1))
            await s.commit()
        await w.run(task(["data:/data"]), name="second")
        for _ in range(2):
            await w.step(w.jobs)
        second = await w.job("second")
        assert second.status == "submitted"  # queued, not failed (dstack#2804)
        waits = [m for m in await w.events() if m.startswith("Job waits")]
        assert waits == ["Job waits: volume data is in use by job first-0-0; the job waits for it"]
        await w.finish_on_agent("first")
        for _ in range(3):
            await w.step(w.jobs)
        assert (await w.job("first")).status == "done"
        for _ in range(2):
            await w.step(w.jobs)
        second = await w.job("second")
        assert second.status == "running"
        live = [a for a in await w.rows(t.VolumeAttachment) if a.status == "attached"]
        assert [a.job_id for a in live] == [second.id]

    vscenario(tmp_path, body)


def test_attach_failure_ends_the_job_with_volume_error(tmp_path: Path) -> None:
    async def body(w: VWorld) -> None:
        await w.volume("data")
        w.cloud.attach_error = "VolumeInUse"
        await w.run(task(["data:/data"]), name="ra")
        for _ in range(3):
            await w.step(w.jobs)
        job = await w.job("ra")
        assert (job.status, job.termination_reason) == ("failed", "volume_error")
        assert "could not be attached to f-" in job.termination_reason_message
        assert "VolumeInUse" in job.termination_reason_message
        assert w.agents.specs == []  # never started

    vscenario(tmp_path, body)


def test_detach_given_up_after_the_timeout_leaves_a_message(tmp_path: Path) -> None:
    from datetime import timedelta

    from dstack.server.reconcilers.job_volumes import DETACH_TIMEOUT

    async def body(w: VWorld) -> None:
        await w.volume("data")
        await w.run(task(["data:/data"]), name="ra")
        await w.step(w.jobs)
        await w.step(w.jobs)
        await w.finish_on_agent("ra")
        w.cloud.detach_done = False
        await w.step(w.jobs)
        await w.step(w.jobs)
        long_ago = utcnow() - DETACH_TIMEOUT - timedelta(seconds=1)
        async with w.ctx.db.session() as s:
            await s.execute(update(t.VolumeAttachment).values(detach_requested_at=long_ago))
            await s.commit()
        await w.step(w.jobs)
        assert (await w.job("ra")).status == "done"
        (att,) = await w.rows(t.VolumeAttachment)
        assert att.status == "detaching" and "not detached" in att.message
        assert any(call[3] for call in w.cloud.calls if call[0] == "detach")  # forced

    vscenario(tmp_path, body)


def test_unknown_or_failed_volume_refuses_the_run_naming_it(tmp_path: Path) -> None:
    async def body(w: VWorld) -> None:
        with pytest.raises(ServerClientError, match="volume nope not found in the project"):
            await w.run(task(["nope:/data"]), name="ra")
        await w.volume("broken", status="failed", status_message="quota exceeded")
        with pytest.raises(ServerClientError, match="volume broken failed: quota exceeded"):
            await w.run(task(["broken:/data"]), name="ra")
        # One alternative existing is enough.
        await w.volume("data-1")
        await w.run(task([{"name": ["data-0", "data-1"], "path": "/d"}]), name="rb")

    vscenario(tmp_path, body)


def test_names_are_interpolated_per_node(tmp_path: Path) -> None:
    async def body(w: VWorld) -> None:
        await w.volume("ckpt-0")
        with pytest.raises(ServerClientError, match="volume ckpt-1 not found"):
            await w.run(task(["ckpt-${{ dstack.node_rank }}:/c"], nodes=2), name="ra")
        with pytest.raises(ServerClientError, match="unsupported interpolation"):
            await w.run(task(["ckpt-${{ run.name }}:/c"]), name="ra")

    vscenario(tmp_path, body)


def test_plan_refuses_a_volume_where_no_offer_or_instance_is(tmp_path: Path) -> None:
    async def body(w: VWorld) -> None:
        await w.volume("far", region="r9")
        async with w.ctx.db.session() as s:
            spec = RunSpec(run_name="ra", configuration=task(["far:/d"]))
            with pytest.raises(ServerClientError, match="volume far is in fake r9"):
                await runs_service.get_plan(w.ctx, s, w.user, w.project, spec, None)

    vscenario(tmp_path, body)


def test_directory_volume_binds_to_the_first_machine_and_keeps_later_jobs_there(
    tmp_path: Path,
) -> None:
    async def body(w: VWorld) -> None:
        vid = await w.volume("ckpt", backend=None, region=None, fleet_id=w.fleet_id)
        await w.run(task(["ckpt:/ckpt"]), name="ra")
        await w.step(w.jobs)
        await w.step(w.jobs)
        a = await w.job("ra")
        (v,) = await w.rows(t.Volume)
        assert v.instance_id == a.instance_id
        assert json.loads(v.provisioning_data)["host_key"].startswith("fake:10.0.0.")
        assert w.agents.specs[0]["volumes"] == [
            {"kind": "directory", "volume_id": vid, "name": "ckpt", "path": "/ckpt"}
        ]
        await w.finish_on_agent("ra")
        for _ in range(3):
            await w.step(w.jobs)
        for n in range(3):
            await w.run(task(["ckpt:/ckpt"]), name=f"rb{n}")
            for _ in range(2):
                await w.step(w.jobs)
            assert (await w.job(f"rb{n}")).instance_id == a.instance_id
            await w.finish_on_agent(f"rb{n}")
            for _ in range(3):
                await w.step(w.jobs)

    vscenario(tmp_path, body)


def test_a_terminated_instance_releases_its_volumes(tmp_path: Path) -> None:
    """The cloud detaches what was attached to a machine it terminates: the attachment ends
    with it, so the volume is free for the next run instead of looking in use forever."""

    async def body(w: VWorld) -> None:
        await w.volume("data")
        await w.run(task(["data:/data"]), name="held")
        await w.step(w.jobs)
        await w.step(w.jobs)
        (att,) = await w.rows(t.VolumeAttachment)
        assert att.status == "attached"
        async with w.ctx.db.session() as s:
            await s.execute(
                update(t.Instance)
                .where(t.Instance.id == att.instance_id)
                .values(status="terminating", dirty=True)
            )
            await s.commit()
        await w.step(w.instances)
        (att,) = await w.rows(t.VolumeAttachment)
        assert att.status == "detached" and "terminated" in (att.message or "")

    vscenario(tmp_path, body)


def test_a_volume_another_job_on_the_instance_uses_is_not_detached(tmp_path: Path) -> None:
    """dstack#3841: two jobs on one instance share the attached volume; the first ending
    must not detach it under the second."""

    async def body(w: VWorld) -> None:
        await w.volume("data")
        async with w.ctx.db.session() as s:  # one machine with room for two jobs
            await s.execute(update(t.Instance).values(total_blocks=2))
            await s.commit()
        await w.run(task(["data:/data"]), name="one")
        await w.run(task(["data:/data"]), name="two")
        for _ in range(3):
            await w.step(w.jobs)
        one, two = await w.job("one"), await w.job("two")
        assert (one.status, two.status) == ("running", "running")
        assert one.instance_id == two.instance_id
        await w.finish_on_agent("one")
        for _ in range(3):
            await w.step(w.jobs)
        assert (await w.job("one")).status == "done"
        assert not [c for c in w.cloud.calls if c[0] == "detach"]
        live = [a for a in await w.rows(t.VolumeAttachment) if a.status == "attached"]
        assert [a.job_id for a in live] == [two.id]
        await w.finish_on_agent("two")
        for _ in range(3):
            await w.step(w.jobs)
        assert (await w.job("two")).status == "done"
        assert [c[0] for c in w.cloud.calls].count("detach") >= 1

    vscenario(tmp_path, body, hosts=1)
