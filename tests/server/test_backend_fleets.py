"""Backend fleets and offers tried one after another, on a real SQLite database with a test
double of a cloud (`FakeCloud`, never presented as a real backend): the fleet, job, instance
and run reconcilers are driven pass by pass."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from compute_double import ComputeDouble
from dstack.models.instances import InstanceType, Resources
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.models.runs import ApplyRunPlanInput, RunSpec
from dstack.models.wire import utcnow
from dstack.server.backends.base import (
    Capabilities,
    Host,
    NoCapacityError,
    OfferCache,
    OfferRequirements,
    Provisioning,
)
from dstack.server.backends.registry import BackendRegistry
from dstack.server.db import tables as t
from dstack.server.db.migrate import migrate
from dstack.server.db.session import Database
from dstack.server.reconcilers.agents import AgentRegistry
from dstack.server.reconcilers.fleets import FleetReconciler
from dstack.server.reconcilers.instance_worker import InstanceReconciler
from dstack.server.reconcilers.job_worker import JobReconciler
from dstack.server.reconcilers.run_worker import RunReconciler
from dstack.server.services import fleet_apply, run_apply
from dstack.server.services.context import ServerContext
from dstack.server.services.crypto import Box
from dstack.server.settings import Settings


def offer(name: str, price: float, spot: bool = False) -> InstanceOfferWithAvailability:
    res = Resources(cpus=8, memory_mib=32768, spot=spot)
    return InstanceOfferWithAvailability(
        backend="fake",
        instance=InstanceType(name=name, resources=res),
        region="r1",
        price=price,
        availability=InstanceAvailability.AVAILABLE,
    )


class FakeCloud(ComputeDouble):
    """A cloud whose offers and capacity the test sets; creating an instance of a type in
    `full` raises NoCapacityError."""

    type = "fake"

    def __init__(self, offers: list[InstanceOfferWithAvailability]) -> None:
        self.capabilities = Capabilities(spot=True)
        self._offers = offers
        self.full: set[str] = set()
        self.created: list[str] = []

    async def offers(self, requirements: OfferRequirements) -> list[InstanceOfferWithAvailability]:
        return list(self._offers)

    async def create_instance(self, host: Host, offer: Any) -> Provisioning:
        if offer.instance.name in self.full:
            raise NoCapacityError(f"no capacity for {offer.instance.name} in {offer.region}")
        self.created.append(offer.instance.name)
        return Provisioning(agent_url="http://127.0.0.1:9", hostname=f"h-{host.name}")


class World:
    def __init__(self, tmp_path: Path, cloud: FakeCloud) -> None:
        self.tmp_path, self.cloud = tmp_path, cloud

    async def start(self) -> World:
        db = Database(f"sqlite+aiosqlite:///{self.tmp_path / 'db.sqlite'}")
        await migrate(db.engine)
        settings = Settings(server_dir=self.tmp_path, database_url=db.url, retry_backoff=(0.0,))
        ctx = ServerContext(settings=settings, db=db, box=Box(self.tmp_path / "key"))
        ctx.backends = BackendRegistry(shared=[self.cloud])
        ctx.offer_cache = OfferCache()
        self.ctx = ctx
        agents = AgentRegistry(ctx)
        self.jobs, self.instances = JobReconciler(ctx, agents), InstanceReconciler(ctx, agents)
        self.fleets, self.runs = FleetReconciler(ctx), RunReconciler(ctx)
        async with db.session() as s:
            self.user = t.User(id=str(uuid.uuid4()), name="u", token_hash="h", created_at=utcnow())
            s.add(self.user)
            await s.flush()
            self.project = t.Project(
                id=str(uuid.uuid4()), name="p", owner_id=self.user.id, created_at=utcnow()
            )
            s.add(self.project)
            await s.commit()
        return self

    async def fleet(self, conf: dict[str, Any]) -> Any:
        async with self.ctx.db.session() as s:
            spec = {"configuration": {"type": "fleet", **conf}}
            return await fleet_apply.apply(self.ctx, s, self.user, self.project, spec, False)

    async def run(self, conf: dict[str, Any], name: str = "rr") -> Any:
        async with self.ctx.db.session() as s:
            plan = ApplyRunPlanInput(run_spec=RunSpec(run_name=name, configuration=conf))
            return await run_apply.apply_plan(self.ctx, s, self.user, self.project, plan, False)

    async def step(self, rec: Any) -> None:
        """One pass of `rec` over every row that is due (forced due: no waiting on timers)."""
        async with self.ctx.db.session() as s:
            await s.execute(update(rec.table).values(dirty=True))
            await s.commit()
        for row_id, token in await rec.claim(100):
            await rec.process(row_id, token)

    async def rows(self, table: Any, **where: Any) -> list[Any]:
        async with self.ctx.db.session() as s:
            q = select(table).where(*(getattr(table, k) == v for k, v in where.items()))
            return list((await s.execute(q)).scalars())

    async def events(self) -> list[str]:
        return [e.message for e in await self.rows(t.Event)]


def scenario(tmp_path: Path, cloud: FakeCloud, body: Any) -> None:
    async def main() -> None:
        w = await World(tmp_path, cloud).start()
        try:
            await body(w)
        finally:
            await w.ctx.db.close()

    asyncio.run(main())


TASK = {"type": "task", "commands": ["true"], "resources": {"cpu": "2..", "memory": "8GB.."}}


def test_fleet_min_is_created_at_apply_from_the_cheapest_offer_and_kept(tmp_path: Path) -> None:
    cloud = FakeCloud([offer("big", 3.0), offer("small", 1.0), offer("cheap-spot", 0.5, True)])

    async def body(w: World) -> None:
        f = await w.fleet({"name": "fl", "nodes": "2..4"})
        insts = await w.rows(t.Instance, fleet_id=f.id)
        assert sorted(i.name for i in insts) == ["fl-0", "fl-1"]
        # on-demand by default: the cheaper spot offer is not the fleet's
        assert {json.loads(i.offer)["instance"]["name"] for i in insts} == {"small"}
        assert all(i.status == "pending" and i.provisioning_job_id is None for i in insts)
        # two idle instances timing out at once both went: the fleet creates one again
        async with w.ctx.db.session() as s:
            await s.execute(
                update(t.Instance)
                .where(t.Instance.id == insts[0].id)
                .values(status="terminated", termination_reason="idle_timeout", deleted=True)
            )
            await s.commit()
        await w.step(w.fleets)
        live = [i for i in await w.rows(t.Instance, fleet_id=f.id) if i.status == "pending"]
        assert sorted(i.name for i in live) == ["fl-1", "fl-2"]
        assert any("Instance created for fleet fl (below nodes.min)" in e for e in await w.events())

    scenario(tmp_path, cloud, body)


def test_a_fleet_that_gets_no_offer_is_accepted_and_says_why(tmp_path: Path) -> None:
    cloud = FakeCloud([offer("small", 1.0)])

    async def body(w: World) -> None:
        f = await w.fleet({"name": "gf", "nodes": 1, "max_price": 0.5})
        assert f.status.value == "active" and f.instances == []
        assert "price $1 > max_price $0.5" in f.status_message
        assert any("No instance created" in e for e in await w.events())

    scenario(tmp_path, cloud, body)


def test_a_fleet_creation_failing_without_retry_stops_and_with_retry_moves_on(
    tmp_path: Path,
) -> None:
    cloud = FakeCloud([offer("a", 1.0), offer("b", 2.0)])
    cloud.full = {"a"}

    async def body(w: World) -> None:
        retry = {"on_events": ["no-capacity"]}
        f = await w.fleet({"name": "hf", "nodes": 1, "retry": retry})
        await w.step(w.instances)  # create fails: no capacity for a (terminating, no_offers)
        await w.step(w.instances)  # terminated through the backend
        await w.step(w.fleets)  # the next offer, b
        names = [json.loads(i.offer)["instance"]["name"] for i in await w.rows(t.Instance)]
        assert names == ["a", "b"]
        await w.step(w.instances)
        assert cloud.created == ["b"]
        g = await w.fleet({"name": "kf", "nodes": 1})
        await w.step(w.instances)
        await w.step(w.instances)
        await w.step(w.fleets)
        assert len(await w.rows(t.Instance, fleet_id=g.id)) == 1  # a failed, nothing more
        (fleet_k,) = await w.rows(t.Fleet, id=g.id)
        assert "`retry` does not cover" in fleet_k.status_message
        del f

    scenario(tmp_path, cloud, body)


def test_a_run_tries_offers_one_after_another(tmp_path: Path) -> None:
    cloud = FakeCloud([offer("a", 1.0), offer("b", 2.0), offer("c", 3.0)])
    cloud.full = {"a"}

    async def body(w: World) -> None:
        await w.fleet({"name": "fl", "nodes": "0..2"})
        await w.run(TASK)
        await w.step(w.jobs)  # placed on a new instance from offer a
        await w.step(w.instances)  # a has no capacity
        await w.step(w.jobs)  # back to submitted, a remembered
        (job,) = await w.rows(t.Job)
        assert job.status == "submitted" and job.instance_id is None
        assert [o["instance_type"] for o in json.loads(job.tried_offers)] == ["a"]
        await w.step(w.jobs)  # placed on offer b
        await w.step(w.instances)
        assert cloud.created == ["b"]
        (job,) = await w.rows(t.Job)
        assert job.status == "provisioning"
        events = await w.events()
        assert any(
            "offer fake r1 a (on-demand, $1/h) failed: no capacity for a in r1; trying the next"
            in e
            for e in events
        )
        async with w.ctx.db.session() as s:
            from dstack.server.services.runs_view import submission_model

            sub = submission_model(await s.get(t.Job, job.id))
        assert [o.instance_type for o in sub.tried_offers] == ["a"]

    scenario(tmp_path, cloud, body)


def test_a_run_whose_every_offer_fails_lists_them(tmp_path: Path) -> None:
    cloud = FakeCloud([offer("a", 1.0), offer("b", 2.0)])
    cloud.full = {"a", "b"}

    async def body(w: World) -> None:
        await w.fleet({"name": "fl", "nodes": "0..2"})
        await w.run(TASK)
        for _ in range(5):
            await w.step(w.jobs)
            await w.step(w.instances)
        (job,) = await w.rows(t.Job)
        assert job.termination_reason == "failed_to_start_due_to_no_capacity"
        assert job.termination_reason_message == (
            "No offer left to try: fake r1 a (on-demand, $1/h): no capacity for a in r1; "
            "fake r1 b (on-demand, $2/h): no capacity for b in r1"
        )

    scenario(tmp_path, cloud, body)


def test_a_spot_interruption_is_retried_on_a_new_instance(tmp_path: Path) -> None:
    cloud = FakeCloud([offer("s", 0.5, spot=True)])

    async def body(w: World) -> None:
        await w.fleet({"name": "fl", "nodes": "0..2", "spot_policy": "spot"})
        conf = {**TASK, "spot_policy": "spot", "retry": {"on_events": ["interruption"]}}
        run = await w.run(conf)
        await w.step(w.jobs)
        (job,) = await w.rows(t.Job)
        first_instance = job.instance_id
        async with w.ctx.db.session() as s:  # it ran; then the cloud reclaimed the host
            await s.execute(
                update(t.Job)
                .where(t.Job.id == job.id)
                .values(status="running", running_at=utcnow())
            )
            await s.execute(
                update(t.Instance)
                .where(t.Instance.id == first_instance)
                .values(status="terminated", termination_reason="unreachable",
                        termination_reason_message="the spot instance was reclaimed")
            )  # fmt: skip
            await s.commit()
        await w.step(w.jobs)
        (job,) = await w.rows(t.Job)
        assert job.status == "terminating"
        assert job.termination_reason == "interrupted_by_no_capacity"
        await w.step(w.jobs)  # host gone: final
        await w.step(w.runs)  # retry: pending
        await w.step(w.runs)  # backoff 0: resubmitted
        jobs = sorted(await w.rows(t.Job, run_id=run.id), key=lambda j: j.submission_num)
        assert [j.status for j in jobs] == ["failed", "submitted"]
        await w.step(w.jobs)
        jobs = sorted(await w.rows(t.Job, run_id=run.id), key=lambda j: j.submission_num)
        assert jobs[1].instance_id and jobs[1].instance_id != first_instance

    scenario(tmp_path, cloud, body)
