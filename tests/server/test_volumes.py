"""Volumes as resources, on a real SQLite database with a test double of a cloud that has
network volumes (`VolumeCloud`, never presented as a real backend, it records its calls): the
services are called as the routes call them and the volume reconciler is driven pass by pass."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from compute_double import ComputeDouble
from dstack.errors import ServerClientError
from dstack.models.wire import utcnow
from dstack.server.backends.base import (
    BackendError,
    Capabilities,
    OfferCache,
    PermanentError,
    VolumeProvisioning,
    VolumeSpec,
)
from dstack.server.backends.registry import BackendRegistry
from dstack.server.db import tables as t
from dstack.server.db.migrate import migrate
from dstack.server.db.session import Database
from dstack.server.reconcilers.volumes import VolumeReconciler
from dstack.server.services import volume_apply, volumes
from dstack.server.services.context import ServerContext
from dstack.server.services.crypto import Box
from dstack.server.settings import Settings


class VolumeCloud(ComputeDouble):
    """A cloud with network volumes; `fail` holds errors the next calls raise, in order. Its
    type is `aws` only because a volume configuration's `backend` accepts the real names; it
    is registered under that name in this test's registry and nowhere else."""

    type = "aws"

    def __init__(self, volumes: bool = True) -> None:
        self.capabilities = Capabilities(volumes=volumes)
        self.calls: list[tuple[str, str]] = []
        self.fail: list[Exception] = []

    def _maybe_fail(self) -> None:
        if self.fail:
            raise self.fail.pop(0)

    async def create_volume(self, volume: VolumeSpec) -> VolumeProvisioning:
        self.calls.append(("create", volume.volume_id))
        self._maybe_fail()
        return VolumeProvisioning(
            external_id=f"vol-{volume.volume_id[:8]}",
            region=volume.region or "",
            availability_zone=f"{volume.region}a",
            size_gb=volume.size_gb or 0,
            data={"tags": volume.tags},
        )

    async def register_volume(self, volume: VolumeSpec) -> VolumeProvisioning:
        self.calls.append(("register", volume.external_id or ""))
        self._maybe_fail()
        return VolumeProvisioning(
            external_id=volume.external_id or "", region=volume.region or "",
            availability_zone="r1b", size_gb=42,
        )  # fmt: skip

    async def delete_volume(self, volume: VolumeSpec) -> None:
        self.calls.append(("delete", volume.external_id or ""))
        self._maybe_fail()


class FakeAgent:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    async def delete_volume_dir(self, volume_id: str) -> None:
        self.deleted.append(volume_id)


class FakeAgents:
    """The agent registry's `client(instance)`; None: the agent cannot be reached."""

    def __init__(self) -> None:
        self.agent: FakeAgent | None = FakeAgent()

    def client(self, inst: t.Instance) -> FakeAgent | None:
        return self.agent


class World:
    def __init__(self, tmp_path: Path, cloud: VolumeCloud) -> None:
        self.tmp_path, self.cloud = tmp_path, cloud

    async def start(self) -> World:
        db = Database(f"sqlite+aiosqlite:///{self.tmp_path / 'db.sqlite'}")
        await migrate(db.engine)
        settings = Settings(
            server_dir=self.tmp_path, database_url=db.url, retry_backoff=(10.0, 60.0)
        )
        ctx = ServerContext(settings=settings, db=db, box=Box(self.tmp_path / "key"))
        ctx.backends = BackendRegistry(shared=[self.cloud])
        ctx.offer_cache = OfferCache()
        self.ctx, self.agents = ctx, FakeAgents()
        self.rec = VolumeReconciler(ctx, self.agents)
        now = utcnow()
        async with db.session() as s:
            self.user = t.User(id=str(uuid.uuid4()), name="u", token_hash="h", created_at=now)
            s.add(self.user)
            await s.flush()
            self.project = t.Project(
                id=str(uuid.uuid4()), name="p", owner_id=self.user.id, created_at=now
            )
            s.add(self.project)
            await s.commit()
        return self

    async def call(self, fn: Any, *args: Any) -> Any:
        async with self.ctx.db.session() as s:
            return await fn(self.ctx, s, self.user, self.project, *args)

    async def apply(self, conf: dict[str, Any]) -> Any:
        return await self.call(volume_apply.create, {"type": "volume", **conf})

    async def plan(self, conf: dict[str, Any]) -> dict[str, Any]:
        return await self.call(volume_apply.get_plan, {"type": "volume", **conf})

    async def delete(self, name: str, force: bool = False) -> None:
        await self.call(volumes.delete_volumes, [name], force)

    async def step(self, shift: float = 0.0) -> None:
        """One pass over every volume (forced due); `shift` moves the reconciler's clock."""
        async with self.ctx.db.session() as s:
            await s.execute(update(t.Volume).values(dirty=True))
            await s.commit()
        for row_id, token in await self.rec.claim(100):
            await self.rec.process(row_id, token)

    async def volume(self, name: str) -> t.Volume:
        async with self.ctx.db.session() as s:
            q = select(t.Volume).where(t.Volume.name == name)
            return (await s.execute(q)).scalars().all()[-1]

    async def set(self, table: Any, row_id: str, **values: Any) -> None:
        async with self.ctx.db.session() as s:
            await s.execute(update(table).where(table.id == row_id).values(**values))
            await s.commit()

    async def events(self) -> list[str]:
        async with self.ctx.db.session() as s:
            q = select(t.Event).order_by(t.Event.recorded_at)
            return [e.message for e in (await s.execute(q)).scalars()]

    async def instance(self, fleet_id: str | None = None, **values: Any) -> t.Instance:
        now = utcnow()
        inst = t.Instance(
            id=str(uuid.uuid4()), project_id=self.project.id, fleet_id=fleet_id, name="h-0",
            instance_num=0, backend="aws", status="idle", hostname="10.0.0.5",
            created_at=now, last_processed_at=now, **values,
        )  # fmt: skip
        async with self.ctx.db.session() as s:
            s.add(inst)
            await s.commit()
        return inst

    async def fleet(self, name: str, conf: dict[str, Any]) -> t.Fleet:
        now = utcnow()
        spec = {"configuration": {"type": "fleet", "name": name, **conf}}
        fleet = t.Fleet(
            id=str(uuid.uuid4()), project_id=self.project.id, name=name, status="active",
            spec=json.dumps(spec), created_at=now, last_processed_at=now,
        )  # fmt: skip
        async with self.ctx.db.session() as s:
            s.add(fleet)
            await s.commit()
        return fleet

    async def attach(self, vol: t.Volume, inst: t.Instance, status: str) -> t.VolumeAttachment:
        a = t.VolumeAttachment(
            id=str(uuid.uuid4()), volume_id=vol.id, instance_id=inst.id, status=status,
            requested_at=utcnow(),
        )  # fmt: skip
        async with self.ctx.db.session() as s:
            s.add(a)
            await s.commit()
        return a


def scenario(tmp_path: Path, body: Any, cloud: VolumeCloud | None = None) -> None:
    async def main() -> None:
        w = await World(tmp_path, cloud or VolumeCloud()).start()
        try:
            await body(w)
        finally:
            await w.ctx.db.close()

    asyncio.run(main())


EBS = {"name": "data", "backend": "aws", "region": "r1", "size": "100GB"}


def test_plan_create_active_and_no_change(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        plan = await w.plan(EBS)
        assert (plan["action"], plan["volume_type"], plan["size_gb"]) == ("create", "managed", 100)
        v = await w.apply(EBS)
        assert v.status == "submitted"
        await w.step()
        row = await w.volume("data")
        assert (row.status, row.external_id, row.availability_zone, row.size_gb) == (
            "active", f"vol-{row.id[:8]}", "r1a", 100,
        )  # fmt: skip
        assert w.cloud.calls == [("create", row.id)]
        await w.step()  # active: nothing more is asked of the cloud
        assert len(w.cloud.calls) == 1
        assert (await w.plan(EBS))["action"] == "no_changes"
        again = await w.apply(EBS)
        assert again.id == row.id
        events = await w.events()
        assert "Volume status changed SUBMITTED -> ACTIVE" in events
        assert any(e.startswith(f"Volume created: vol-{row.id[:8]} in r1 (r1a)") for e in events)
        model = await w.call(lambda ctx, s, u, p: volumes.get_volume(s, p, "data"))
        assert model.provisioning_data["availability_zone"] == "r1a"

    scenario(tmp_path, body)


def test_a_changed_configuration_is_refused_naming_what_differs(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.apply(EBS)
        with pytest.raises(ServerClientError) as e:
            await w.plan({**EBS, "size": "200GB"})
        assert "size: 100.0 -> 200.0" in e.value.message
        assert "not updated in place" in e.value.message
        with pytest.raises(ServerClientError):
            await w.apply({**EBS, "size": "200GB"})

    scenario(tmp_path, body)


def test_backend_must_be_configured_and_have_volumes(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        with pytest.raises(ServerClientError) as e:
            await w.plan({**EBS, "backend": "gcp", "region": "us-east1"})
        assert "backend gcp is not configured for project p (configured: aws)" in str(e.value)
        w.cloud.capabilities = Capabilities(volumes=False)
        with pytest.raises(ServerClientError) as e:
            await w.plan(EBS)
        assert e.value.message == "backend aws has no network volumes"
        w.cloud.capabilities = Capabilities(volumes=True)
        with pytest.raises(ServerClientError) as e:
            await w.plan({k: v for k, v in EBS.items() if k != "size"})
        assert e.value.field == "size"

    scenario(tmp_path, body)


def test_transient_failure_backs_off_with_a_message_then_succeeds(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        w.cloud.fail = [BackendError("RequestLimitExceeded: slow down")]
        await w.apply(EBS)
        await w.step()
        row = await w.volume("data")
        assert row.status == "submitted" and row.attempts == 1
        assert row.status_message == (
            "Creating the volume failed (attempt 1): RequestLimitExceeded: slow down; "
            "next try in 10s"
        )
        for _ in range(5):  # inside the backoff: no call, however often it is looked at
            await w.step()
        assert len(w.cloud.calls) == 1
        assert (await w.events()).count(row.status_message) == 1
        await w.set(t.Volume, row.id, next_attempt_at=utcnow() - timedelta(seconds=1))
        await w.step()
        row = await w.volume("data")
        assert (row.status, row.attempts, row.status_message) == ("active", 0, None)
        assert len(w.cloud.calls) == 2

    scenario(tmp_path, body)


def test_failures_past_the_backoff_or_permanent_fail_the_volume(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        w.cloud.fail = [BackendError("boom")] * 3
        await w.apply(EBS)
        for _ in range(3):
            await w.step()
            row = await w.volume("data")
            await w.set(t.Volume, row.id, next_attempt_at=None)
        row = await w.volume("data")
        assert row.status == "failed"
        assert row.status_message == "Creating the volume failed 3 times; last: boom"
        w.cloud.fail = [PermanentError("vol-missing does not exist")]
        await w.apply({"name": "ext", "backend": "aws", "region": "r1", "volume_id": "vol-missing"})
        await w.step()
        ext = await w.volume("ext")
        assert ext.status == "failed"
        assert ext.status_message == "Registering the volume failed: vol-missing does not exist"

    scenario(tmp_path, body)


def test_register_external_and_delete_keeps_the_cloud_volume(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        conf = {"name": "ext", "backend": "aws", "region": "r1", "volume_id": "vol-123"}
        assert (await w.plan(conf))["volume_type"] == "external"
        await w.apply(conf)
        await w.step()
        row = await w.volume("ext")
        assert (row.status, row.external, row.size_gb) == ("active", True, 42)
        await w.delete("ext")
        await w.step()
        row = await w.volume("ext")
        assert row.deleted and row.deleted_at is not None
        assert w.cloud.calls == [("register", "vol-123")]  # never deleted in the cloud
        assert "Volume deregistered; the cloud volume itself is kept (external)" in (
            await w.events()
        )

    scenario(tmp_path, body)


def test_delete_refused_while_attached_then_done_after_detach(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.apply(EBS)
        await w.step()
        vol = await w.volume("data")
        inst = await w.instance()
        a = await w.attach(vol, inst, "attached")
        with pytest.raises(ServerClientError) as e:
            await w.delete("data")
        assert "Volume data is in use by no run on instance h-0" in e.value.message
        await w.set(t.VolumeAttachment, a.id, status="detaching", detach_requested_at=utcnow())
        with pytest.raises(ServerClientError):
            await w.delete("data", force=True)  # not stuck yet: force does not end it
        await w.set(t.VolumeAttachment, a.id, status="detached", detached_at=utcnow())
        await w.delete("data")
        await w.step()
        vol = await w.volume("data")
        assert vol.deleted
        assert w.cloud.calls[-1] == ("delete", vol.external_id)
        names = await w.call(lambda ctx, s, u, p: volumes.list_volumes(s, p))
        assert names == []

    scenario(tmp_path, body)


def test_a_stuck_detach_is_flagged_and_force_ends_it(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.apply(EBS)
        await w.step()
        vol = await w.volume("data")
        inst = await w.instance()
        long_ago = utcnow() - timedelta(seconds=volumes.DETACH_STUCK_SECONDS + 5)
        a = await w.attach(vol, inst, "detaching")
        await w.set(t.VolumeAttachment, a.id, detach_requested_at=long_ago)
        await w.step()
        model = await w.call(lambda ctx, s, u, p: volumes.get_volume(s, p, "data"))
        (att,) = model.attachments
        assert att["status"] == "detaching" and "--force` marks it detached" in att["message"]
        with pytest.raises(ServerClientError) as e:
            await w.delete("data")
        assert "stuck: use --force" in e.value.message
        await w.delete("data", force=True)
        await w.step()
        assert (await w.volume("data")).deleted

    scenario(tmp_path, body)


def test_a_failing_delete_backs_off_and_says_why(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.apply(EBS)
        await w.step()
        w.cloud.fail = [BackendError("VolumeInUse")]
        await w.delete("data")
        await w.step()
        await w.step()
        vol = await w.volume("data")
        assert not vol.deleted and vol.to_be_deleted
        assert vol.status_message.startswith("Deleting the volume failed (attempt 1): VolumeInUse")
        assert [c[0] for c in w.cloud.calls] == ["create", "delete"]
        await w.set(t.Volume, vol.id, next_attempt_at=None)
        await w.step()
        assert (await w.volume("data")).deleted

    scenario(tmp_path, body)


def test_auto_cleanup_marks_an_unused_volume_and_deletes_it(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.apply({**EBS, "auto_cleanup_duration": "1h"})
        await w.step()
        vol = await w.volume("data")
        inst = await w.instance()
        a = await w.attach(vol, inst, "attached")
        old = utcnow() - timedelta(hours=2)
        await w.set(t.Volume, vol.id, created_at=old, last_used_at=old)
        await w.step()
        assert not (await w.volume("data")).to_be_deleted  # attached: in use
        await w.set(t.VolumeAttachment, a.id, status="detached", detached_at=old)
        await w.step()  # marked
        await w.step()  # deleted
        vol = await w.volume("data")
        assert vol.deleted
        assert any("auto_cleanup_duration (3600s): marked for deletion" in e
                   for e in await w.events())  # fmt: skip

    scenario(tmp_path, body)


def test_directory_volume_on_an_ssh_fleet(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        fleet = await w.fleet("ssh", {"ssh_config": {"user": "u", "hosts": ["10.0.0.5"]}})
        await w.fleet("cloud", {"nodes": 1, "backends": ["aws"]})
        with pytest.raises(ServerClientError) as e:
            await w.plan({"name": "dv", "fleet": "cloud"})
        assert "fleet cloud is a backend fleet" in e.value.message
        with pytest.raises(ServerClientError) as e:
            await w.plan({"name": "dv", "fleet": "nope"})
        assert e.value.message == "fleet nope does not exist in project p"
        plan = await w.plan({"name": "dv", "fleet": "ssh"})
        assert (plan["volume_type"], plan["fleet"]) == ("directory", "ssh")
        v = await w.apply({"name": "dv", "fleet": "ssh"})
        assert v.status == "active"  # nothing to create
        # never bound to a machine: deleted without any agent call
        await w.delete("dv")
        await w.step()
        assert (await w.volume("dv")).deleted and w.agents.agent.deleted == []
        # bound: the agent removes the directory
        await w.apply({"name": "dv", "fleet": "ssh"})
        vol = await w.volume("dv")
        inst = await w.instance(fleet_id=fleet.id)
        await w.set(t.Volume, vol.id, instance_id=inst.id,
                    provisioning_data=json.dumps({"host_key": "aws:10.0.0.5"}))  # fmt: skip
        await w.delete("dv")
        w.agents.agent, agent = None, w.agents.agent  # unreachable for one pass
        await w.step()
        vol = await w.volume("dv")
        assert not vol.deleted and "cannot be reached" in vol.status_message
        w.agents.agent = agent
        await w.set(t.Volume, vol.id, next_attempt_at=None)
        await w.step()
        assert (await w.volume("dv")).deleted and agent.deleted == [vol.id]
        assert w.cloud.calls == []

    scenario(tmp_path, body)


def test_directory_volume_whose_machine_is_gone_needs_force(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        fleet = await w.fleet("ssh", {"ssh_config": {"user": "u", "hosts": ["10.0.0.5"]}})
        await w.apply({"name": "dv", "fleet": "ssh"})
        vol = await w.volume("dv")
        inst = await w.instance(fleet_id=fleet.id)
        await w.set(t.Volume, vol.id, instance_id=inst.id,
                    provisioning_data=json.dumps({"host_key": "aws:10.0.0.5"}))  # fmt: skip
        await w.set(t.Instance, inst.id, status="terminated", deleted=True)
        with pytest.raises(ServerClientError) as e:
            await w.delete("dv")
        assert "the machine holding its directory is gone" in e.value.message
        await w.delete("dv", force=True)
        await w.step()
        assert (await w.volume("dv")).deleted and w.agents.agent.deleted == []
        assert "Volume forgotten (forced); its directory was left on the host" in (await w.events())

    scenario(tmp_path, body)


def test_directory_volume_in_use_by_a_job_is_not_deleted(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.fleet("ssh", {"ssh_config": {"user": "u", "hosts": ["10.0.0.5"]}})
        await w.apply({"name": "dv", "fleet": "ssh"})
        vol = await w.volume("dv")
        now = utcnow()
        async with w.ctx.db.session() as s:
            run = t.Run(id=str(uuid.uuid4()), project_id=w.project.id, user_id=w.user.id,
                        run_name="train", status="running", run_spec="{}", submitted_at=now,
                        last_processed_at=now)  # fmt: skip
            s.add(run)
            await s.flush()
            s.add(t.Job(id=str(uuid.uuid4()), run_id=run.id, project_id=w.project.id,
                        run_name="train", job_name="train-0-0", status="running", job_spec="{}",
                        submitted_at=now, last_processed_at=now,
                        volumes=json.dumps([{"volume_id": vol.id, "name": "dv",
                                             "path": "/ckpt"}])))  # fmt: skip
            await s.commit()
        with pytest.raises(ServerClientError) as e:
            await w.delete("dv")
        assert "run train (job train-0-0, running)" in e.value.message

    scenario(tmp_path, body)
