"""Readiness probes of service replicas, run by the server and recorded on the job rows.

Every `tick` the prober loads running replicas that have probes, runs the probes that are due
(each at its own `interval`), and writes a change of a success streak to `jobs.probe_streaks`
and whether the probes passed (`jobs.ready`, from `models.readiness.probes_passed`). A 2xx
answer is a success. Which replicas are probed (`may_serve`) and what "ready" means to the
proxy and the run reconciler (`is_ready`) come from the same module, `models/readiness.py`.
A probe success also clears `unhealthy_at`.

With several server replicas on one database, one of them probes (the one holding the
`probes` cluster lease, `gate`); every replica reads the results from the job rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy import select, update

from dstack.models.readiness import ReplicaFacts, may_serve, probes_passed
from dstack.models.runs import JobSpec, JobStatus
from dstack.server.db import tables as t
from dstack.server.db.session import Database
from dstack.server.proxy.events import replica_event
from dstack.server.proxy.upstream import upstream_for

log = logging.getLogger(__name__)


class Prober:
    def __init__(self, db: Database, tick: float) -> None:
        self.db = db
        self.tick = tick
        self.client: httpx.AsyncClient | None = None
        self._due: dict[tuple[str, int], float] = {}
        self._inflight: set[str] = set()
        # Whether this server process probes now (db/cluster.ClusterLease.held); None: always.
        self.gate: Callable[[], Awaitable[bool]] | None = None

    async def run_forever(self) -> None:
        while True:
            try:
                await self.pass_once()
            except Exception:  # noqa: BLE001 - a bad pass must not stop probing
                log.exception("probe pass failed")
            await asyncio.sleep(self.tick)

    async def pass_once(self) -> None:
        if self.gate is not None and not await self.gate():
            self._due.clear()  # another replica probes; start afresh if we take over
            return
        async with self.db.session() as s:
            running = select(t.Job).where(t.Job.status == JobStatus.RUNNING.value)
            jobs = list((await s.execute(running)).scalars())
            due = []
            for job in jobs:
                if job.id in self._inflight:
                    continue
                spec = JobSpec.model_validate_json(job.job_spec)
                if not spec.probes or not spec.service_port:
                    continue
                facts = ReplicaFacts(
                    job_num=job.job_num,
                    status=job.status,
                    has_probes=True,
                    probes_passed=job.ready,
                    stop_requested=job.stop_requested,
                )
                if not may_serve(facts):
                    continue
                inst = await s.get(t.Instance, job.instance_id) if job.instance_id else None
                due.append((job, spec, inst))
        # Reaching a host may open an SSH forward: done after the session ended.
        work = []
        for job, spec, inst in due:
            addr = await upstream_for(job, inst, spec.service_port)
            if addr is not None:
                work.append((job, spec, addr))
        live = {job.id for job, _, _ in work}
        self._due = {k: v for k, v in self._due.items() if k[0] in live}
        for job, spec, addr in work:
            self._inflight.add(job.id)
            asyncio.create_task(self._probe_job(job, spec, addr))

    async def _probe_job(self, job: t.Job, spec: JobSpec, addr: tuple[str, int]) -> None:
        try:
            streaks = json.loads(job.probe_streaks or "[]")
            streaks = (streaks + [0] * len(spec.probes))[: len(spec.probes)]
            now = time.monotonic()
            changed = job.probe_streaks is None  # the first result is news even if a failure
            ran = False
            for i, probe in enumerate(spec.probes):
                if probe.get("until_ready") and streaks[i] >= int(probe.get("ready_after", 1)):
                    continue
                if self._due.get((job.id, i), 0.0) > now:
                    continue
                self._due[(job.id, i)] = now + float(probe.get("interval", 15))
                ok = await self._run(probe, addr)
                ran = True
                new = streaks[i] + 1 if ok else 0
                if new != streaks[i]:
                    streaks[i] = min(new, 1_000_000)
                    changed = True
            ready = probes_passed(streaks, spec.probes)
            if changed and not ran:
                changed = False
            if changed or ready != job.ready:
                values: dict[str, Any] = {"probe_streaks": json.dumps(streaks), "ready": ready}
                if ready and any(streaks):
                    values["unhealthy_at"] = None
                async with self.db.session() as s:
                    await s.execute(update(t.Job).where(t.Job.id == job.id).values(**values))
                    if ready != job.ready:
                        replica_event(
                            s,
                            job,
                            "Replica ready: probes passed"
                            if ready
                            else "Replica not ready: a probe is failing",
                        )
                    await s.commit()
        except Exception:  # noqa: BLE001
            log.exception("probing job %s failed", job.id)
        finally:
            self._inflight.discard(job.id)

    def _client(self) -> httpx.AsyncClient:
        """Made at the first probe rather than at the server's start: httpx builds a verifying
        TLS context for each client (~40 ms of CPU), which the first API answer after a
        start would otherwise wait for."""
        if self.client is None:
            self.client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=2000, max_keepalive_connections=500),
                follow_redirects=False,
                trust_env=False,
            )
        return self.client

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def _run(self, probe: dict[str, Any], addr: tuple[str, int]) -> bool:
        url = f"http://{addr[0]}:{addr[1]}{probe.get('url', '/')}"
        headers = {h["name"]: h["value"] for h in probe.get("headers") or []}
        try:
            resp = await self._client().request(
                str(probe.get("method", "get")).upper(),
                url,
                headers=headers,
                content=probe.get("body"),
                timeout=float(probe.get("timeout", 10)),
            )
            return 200 <= resp.status_code < 300
        except httpx.HTTPError:
            return False
