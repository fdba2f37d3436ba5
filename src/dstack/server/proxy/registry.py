"""What the proxy knows about services, read from the database and cached briefly.

A request costs no database round trip while the cache is fresh (`ttl` seconds); a replica
change (a new replica, a probe result) is seen within that time plus one load, since a value
just past its `ttl` is served while it is reloaded in the background (proxy/cache.py). Tokens
are cached the same way, by their hash, with the projects the user may use.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from dstack.models.readiness import ReplicaFacts, is_ready
from dstack.models.runs import JobSpec, JobStatus, RunSpec, RunStatus
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.db.session import Database
from dstack.server.proxy.cache import AsyncCache
from dstack.server.proxy.upstream import upstream_for

# A terminating service takes no new requests.
ACTIVE = tuple(
    s.value
    for s in (RunStatus.PENDING, RunStatus.SUBMITTED, RunStatus.PROVISIONING, RunStatus.RUNNING)
)
CALLER_TTL = 5.0


@dataclass
class Replica:
    job_id: str
    replica_num: int
    deployment_num: int
    host: str
    port: int


@dataclass
class Service:
    run_id: str
    project_id: str
    project_name: str
    run_name: str
    auth: bool
    strip_prefix: bool
    model: dict[str, Any] | None  # {"name", "prefix", "format"}
    rate_limits: list[dict[str, Any]]
    replicas: list[Replica] = field(default_factory=list)
    active: bool = True  # False once the run is terminating or finished


@dataclass
class Caller:
    user_id: str
    admin: bool
    roles: dict[str, str]  # project id -> project role


class Registry:
    def __init__(self, db: Database, ttl: float = 1.0, unhealthy_cooldown: float = 10.0) -> None:
        self.db = db
        self.ttl = ttl
        self.unhealthy_cooldown = unhealthy_cooldown
        self._services: AsyncCache[tuple[str, str], Service | None] = AsyncCache(
            lambda key: self._load(*key), ttl, max_stale=5 * ttl
        )
        self._callers: AsyncCache[str, Caller | None] = AsyncCache(
            self._load_caller, CALLER_TTL, max_stale=2 * CALLER_TTL
        )
        self._models: dict[str, tuple[float, list[tuple[str, str]]]] = {}

    def forget(self, project: str, run: str) -> None:
        self._services.forget((project, run))

    async def service(self, project: str, run: str, fresh: bool = False) -> Service | None:
        return await self._services.get((project, run), fresh)

    def forget_callers(self) -> None:
        """A user was deactivated, deleted, demoted or given a new token: refuse them at once
        (in this process; other server replicas within CALLER_TTL)."""
        self._callers.forget_all()

    async def caller(self, token_hash: str) -> Caller | None:
        return await self._callers.get(token_hash)

    async def _load_caller(self, token_hash: str) -> Caller | None:
        async with self.db.session() as s:
            user = (
                await s.execute(select(t.User).where(t.User.token_hash == token_hash))
            ).scalar_one_or_none()
            if user is None or not user.active:
                return None
            rows = await s.execute(
                select(t.Member.project_id, t.Member.project_role).where(
                    t.Member.user_id == user.id
                )
            )
            roles = {pid: role for pid, role in rows.all()}
            return Caller(user.id, user.global_role == "admin", roles)

    async def models(self, project: str) -> list[tuple[str, str]]:
        """(model name, run name) of the project's active model services."""
        now = time.monotonic()
        cached = self._models.get(project)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        out: list[tuple[str, str]] = []
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(t.Run.run_name, t.Run.run_spec)
                    .join(t.Project, t.Project.id == t.Run.project_id)
                    .where(
                        t.Project.name == project,
                        t.Run.deleted.is_(False),
                        t.Run.status.in_(ACTIVE),
                    )
                    .order_by(t.Run.submitted_at)
                )
            ).all()
        for run_name, spec in rows:
            conf = json.loads(spec).get("configuration") or {}
            model = conf.get("model")
            if conf.get("type") == "service" and isinstance(model, dict) and model.get("name"):
                out.append((model["name"], run_name))
        self._models[project] = (now, out)
        return out

    async def _load(self, project: str, run_name: str) -> Service | None:
        async with self.db.session() as s:
            row = (
                await s.execute(
                    select(t.Run, t.Project)
                    .join(t.Project, t.Project.id == t.Run.project_id)
                    .where(
                        t.Project.name == project,
                        t.Run.run_name == run_name,
                        t.Run.deleted.is_(False),
                    )
                    .order_by(t.Run.submitted_at.desc())
                    .limit(1)
                )
            ).first()
            if row is None:
                return None
            run, proj = row
            conf = RunSpec.model_validate_json(run.run_spec).configuration
            if conf.get("type") != "service":
                return None
            svc = Service(
                run_id=run.id,
                project_id=proj.id,
                project_name=proj.name,
                run_name=run.run_name,
                auth=bool(conf.get("auth", True)),
                strip_prefix=bool(conf.get("strip_prefix", True)),
                model=conf.get("model") if isinstance(conf.get("model"), dict) else None,
                rate_limits=list(conf.get("rate_limits") or []),
                active=run.status in ACTIVE,
            )
            if not svc.active:
                return svc
            running = t.Job.status == JobStatus.RUNNING.value
            jobs = list(
                (await s.execute(select(t.Job).where(t.Job.run_id == run.id, running))).scalars()
            )
            now = utcnow()
            ready = []
            for job in jobs:
                spec = JobSpec.model_validate_json(job.job_spec)
                facts = ReplicaFacts(
                    job_num=spec.job_num,
                    status=job.status,
                    has_probes=bool(spec.probes),
                    probes_passed=job.ready,
                    unhealthy_at=job.unhealthy_at,
                    stop_requested=job.stop_requested,
                )
                if not spec.service_port or not is_ready(facts, now, self.unhealthy_cooldown):
                    continue
                inst = await s.get(t.Instance, job.instance_id) if job.instance_id else None
                ready.append((job, inst, spec.service_port))
        # Reaching a host may open an SSH forward: done after the session ended, so no
        # database connection waits on the network.
        for job, inst, port in ready:
            addr = await upstream_for(job, inst, port)
            if addr is not None:
                svc.replicas.append(
                    Replica(job.id, job.replica_num, job.deployment_num, addr[0], addr[1])
                )
        return svc
