"""Carries out the job decisions of `jobs.py`: loads a snapshot, observes the agent, acts
outside any transaction and applies the result guarded by the lease."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from dstack.errors import ServerClientError
from dstack.models.instances import InstanceStatus
from dstack.models.runs import JobSpec, JobStatus
from dstack.models.wire import utcnow
from dstack.server.agent_client import (
    AgentClientError,
    AgentError,
    AgentUnreachableError,
    JobState,
)
from dstack.server.db import tables as t
from dstack.server.reconcilers.agents import AgentRegistry
from dstack.server.reconcilers.base import LeaseLost, Reconciler, Requeued
from dstack.server.reconcilers.host_jobs import HostJobs
from dstack.server.reconcilers.job_facts import (
    cluster_ips,
    idle_duration,
    is_spot,
    lost_as,
    mark_queue_due,
    new_instance_offer,
    next_instance_num,
    note_status,
    total_blocks,
    tried_offers,
)
from dstack.server.reconcilers.job_logs import copy_logs
from dstack.server.reconcilers.job_placement import Placer, placement_values
from dstack.server.reconcilers.job_snapshots import Snapshot, SnapshotLoader
from dstack.server.reconcilers.job_start import (
    agent_job_spec,
    published_ports,
    runtime_data,
    ssh_keys,
)
from dstack.server.reconcilers.job_volumes import VolumeSteps
from dstack.server.reconcilers.jobs import (
    Decision,
    JobView,
    StartKind,
    StartOutcome,
    after_detach,
    after_start,
    decide,
    settled_at_once,
)
from dstack.server.reconcilers.shared_writes import SharedWrites
from dstack.server.scheduler.precedence import Rival
from dstack.server.services import events, logs, secrets
from dstack.server.services.codes import start_payload
from dstack.server.services.context import ServerContext
from dstack.server.services.hosts import capabilities, host_label
from dstack.server.services.metrics import store_samples
from dstack.server.services.pool import (
    busy_blocks,
    fleet_conf,
    live_backend_types,
)
from dstack.server.services.ssh_keys import project_keypair

_FINISHED = tuple(s.value for s in JobStatus if s.is_finished())


class JobReconciler(Reconciler):
    kind = "jobs"
    table = t.Job
    active_statuses = tuple(s.value for s in JobStatus if not s.is_finished())
    workers = 16

    def __init__(self, ctx: ServerContext, agents: AgentRegistry) -> None:
        super().__init__(ctx)
        self.agents = agents
        # Creating an instance of a single-instance backend is serialized: two jobs placed at
        # once must not each create one (its single agent would refuse the second).
        self._single_lock = asyncio.Lock()
        self._specs: dict[str, tuple[str, JobSpec]] = {}
        self.placer = Placer(ctx)
        self.volumes = VolumeSteps(ctx)
        self.snapshots = SnapshotLoader(ctx, self.placer, self.volumes, self._job_spec)
        self.shared = SharedWrites(ctx.db, isolated=(LeaseLost,))
        sink = partial(store_samples, ctx.db)  # samples come with the job list
        self.host_jobs = HostJobs(ctx.settings.running_job_poll_seconds / 2, metrics_sink=sink,
                                  change_sink=self.mark_due)  # moved on the agent: due now
        self.on_close(self.host_jobs.close)

    def claim_order(self) -> tuple[Any, ...]:
        # Queued jobs are taken in priority, then submission order (DESIGN.md, 'Scheduling').
        # The priority stays on the run (read through a correlated subquery, not copied), so a
        # run's priority is the one its jobs are claimed by.
        priority = select(t.Run.priority).where(t.Run.id == t.Job.run_id).scalar_subquery()
        return (priority.desc(), t.Job.submitted_at, t.Job.last_processed_at)

    def interval(self, status: str) -> float:
        if status in (JobStatus.RUNNING.value, JobStatus.TERMINATING.value):
            return self.ctx.settings.running_job_poll_seconds
        return self.ctx.settings.resync_seconds

    async def process(self, row_id: str, token: str) -> None:
        # A job just assigned to an instance that is up goes on to its start in the same pass,
        # under the same lease: nothing outside is awaited in between.
        for first in (True, False):
            snap = await self._load(row_id, token)
            if snap is None:
                return
            agent_job, reachable = await self._observe(snap)
            view = self._view(snap, agent_job, reachable)
            now = utcnow()
            d = decide(view, now)
            # Before the act, which then does the final step (starts and detaches never settle).
            then = None if snap.job.volumes else settled_at_once(view, d, now)
            d, extra = await self._act(snap, d, agent_job, then)
            onward = first and d.action == "assign"
            await self._apply(snap, d, extra, token, now, then, onward)
            if not onward:
                return

    # -- load and observe -----------------------------------------------------------------

    async def _load(self, row_id: str, token: str) -> Snapshot | None:
        """Loaded with the other passes started at the same time (job_snapshots.py)."""
        return await self.snapshots.load(row_id, token)

    def _job_spec(self, job: t.Job) -> JobSpec:
        """Parsed once per job, not every pass (a running job is looked at twice a second)."""
        cached = self._specs.get(job.id)
        if cached is None or cached[0] != job.job_spec:
            if len(self._specs) > 4096:
                self._specs.clear()
            cached = self._specs[job.id] = (job.job_spec, JobSpec.model_validate_json(job.job_spec))
        return cached[1]

    async def _observe(self, snap: Snapshot) -> tuple[JobState | None, bool]:
        """The agent's state of the job (None: the agent has no such job) and whether the
        agent answered. Jobs of one host share one list call (`host_jobs.py`)."""
        watched = (JobStatus.RUNNING.value, JobStatus.TERMINATING.value)
        if snap.job.status not in watched or snap.instance is None:
            return None, snap.instance is not None and not snap.instance.unreachable
        client = self.agents.client(snap.instance)
        if client is None:
            return None, True
        try:
            return await self.host_jobs.job(snap.instance.id, client, snap.job.id), True
        except AgentUnreachableError:
            await self._suspect(snap.instance.id)
            return None, False
        except AgentError:
            return None, False

    async def _suspect(self, instance_id: str) -> None:
        """Ask the instance reconciler to check (and for local, restart) the agent now."""
        async with self.ctx.db.session() as s:
            await s.execute(
                update(t.Instance).where(t.Instance.id == instance_id).values(dirty=True)
            )
            await s.commit()
        self.ctx.hub.wake("instances")

    def _view(self, snap: Snapshot, agent_job: dict[str, Any] | None, reachable: bool) -> JobView:
        inst, job, st = snap.instance, snap.job, self.ctx.settings
        return JobView(
            status=job.status,
            termination_reason=job.termination_reason,
            instance_id=job.instance_id,
            instance_status=inst.status if inst else None,
            instance_message=inst.termination_reason_message if inst else None,
            agent_job=agent_job,
            agent_reachable=reachable,
            running_at=job.running_at,
            disconnected_at=job.disconnected_at,
            stop_sent_at=job.stop_sent_at,
            max_duration=snap.spec.max_duration,
            stop_duration=snap.spec.stop_duration or 0,
            unreachable_grace=st.agent_unreachable_grace_seconds,
            terminate_grace=st.terminate_grace_seconds,
            spot=is_spot(inst),
            placement=snap.placement,
            queued=snap.queued,
            no_capacity_message=snap.no_capacity,
            inactivity_duration=snap.inactivity_duration,
            inactivity_secs=job.inactivity_secs,
            utilization_violation=snap.utilization_violation,
            stop_requested=job.stop_requested,
            stop_abort=job.stop_abort,
            stop_reason=job.stop_reason,
            instance_reason=inst.termination_reason if inst else None,
            instance_lost_as=lost_as(inst),
            new_instance_offer=new_instance_offer(inst, job),
            tried_offers=tried_offers(job),
            volume_error=snap.volume_error,
            volumes_held=snap.volumes_held,
            outranked=snap.outranked[1] if snap.outranked else None,
        )

    # -- act ------------------------------------------------------------------------------

    async def _act(
        self, snap: Snapshot, d: Decision, agent_job: JobState | None, then: Decision | None = None
    ) -> tuple[Decision, dict[str, Any]]:
        """Carry out `d` (and `then`, the final step written with it); returns the decision to
        apply (a start's outcome decides its own, `after_start()`) and extra column values."""
        if d.action == "start":
            outcome, extra = await self._start(snap)
            return after_start(outcome), extra
        if d.action in ("detach", "detach_abort"):
            abort, grace = d.action == "detach_abort", snap.spec.stop_duration or 0
            released = await self.volumes.release(snap.job, snap.instance, abort, grace)
            d = after_detach(d, released)
        extra: dict[str, Any] = {}
        if snap.job.status == JobStatus.RUNNING.value:
            jrd = published_ports(snap.job.job_runtime_data, agent_job)
            if jrd is not None:
                extra["job_runtime_data"] = jrd
        client = self.agents.client(snap.instance) if snap.instance else None
        if client is None:
            return d, extra
        action = then.action if then is not None else d.action
        try:
            if action in ("stop", "abort"):
                await client.stop_job(
                    snap.job.id, abort=action == "abort", reason=snap.job.termination_reason
                )
            if action in ("copy_logs", "finalize", "stop", "abort"):
                path = logs.log_path(
                    self.ctx.settings.logs_dir, snap.project.name, snap.job.run_name, snap.job.id
                )
                await copy_logs(path, client, snap.job.id, agent_job, action == "finalize")
            if action == "finalize" and agent_job is not None:
                await client.remove_job(snap.job.id)
        except AgentClientError:
            pass  # observed again on the next pass; finalize still completes
        return d, extra

    async def _start(self, snap: Snapshot) -> tuple[StartOutcome, dict[str, Any]]:
        """Send the job, its spec and code in one idempotent call (a start repeated after a
        crash finds the job and never runs it twice). Returns what happened, for
        `after_start()`, and the column values the answer fills in."""
        inst = snap.instance
        client = self.agents.client(inst) if inst else None
        if inst is None or client is None:
            return StartOutcome(StartKind.AGENT_NOT_READY), {}
        host_info = json.loads(inst.host_info or "{}")
        cluster = None
        if snap.spec.jobs_per_replica > 1:
            async with self.ctx.db.session() as s:
                cluster = await cluster_ips(s, snap.job, snap.spec.jobs_per_replica, snap.run)
            if cluster is None:  # peers not placed yet, or the master has not started
                return StartOutcome(StartKind.PEERS_NOT_READY), {}
        async with self.ctx.db.session() as s:
            project = await s.get(t.Project, snap.project.id)
            _, project_key = await project_keypair(s, self.ctx.box, project)
            await s.commit()
            payload = await start_payload(s, self.ctx.box, snap.project.id, snap.run, snap.spec)
        keys = ssh_keys(snap.run, project_key)
        spec, runtime_error = agent_job_spec(
            snap.job,
            snap.run,
            snap.spec,
            inst,
            host_info,
            cluster=cluster,
            keys=keys,
            label=host_label(self.ctx, inst),
            remote_host=capabilities(self.ctx, inst.backend, inst.project_id).remote_hosts,
        )
        runtime_error = runtime_error or payload.error
        if runtime_error:
            return StartOutcome(StartKind.RUNTIME_ERROR, runtime_error), {}
        try:
            spec = await secrets.resolve_job(self.ctx, snap.project.id, spec)
        except ServerClientError as e:  # a secret deleted since the apply: the message names it
            return StartOutcome(StartKind.RUNTIME_ERROR, e.message), {}
        mounted = await self.volumes.attach(snap.job, snap.spec, inst)
        if mounted.error:
            return StartOutcome(StartKind.VOLUME_ERROR, mounted.error), {}
        if mounted.waiting:
            return StartOutcome(StartKind.VOLUME_WAIT, mounted.waiting), {}
        spec["volumes"] = mounted.entries
        spec.update(payload.fields)
        try:
            state = await client.start_job(spec, payload.code)
        except AgentUnreachableError:
            return StartOutcome(StartKind.AGENT_UNREACHABLE), {}  # the instance check notices
        except AgentError as e:
            return StartOutcome(StartKind.AGENT_REFUSED, str(e)), {}
        jrd = runtime_data(spec, state, snap.spec)
        return StartOutcome.answered(state), {"job_runtime_data": jrd.model_dump_json()}

    # -- apply ----------------------------------------------------------------------------

    async def _apply(
        self,
        snap: Snapshot,
        d: Decision,
        extra: dict[str, Any],
        token: str,
        now: datetime,
        then: Decision | None = None,
        onward: bool = False,
    ) -> None:
        """`then`: the final step `settled_at_once` decided after `d`, written with it.
        `onward`: the pass keeps the lease and takes the next step itself (no wake-ups)."""
        job = snap.job
        values: dict[str, Any] = dict(d.values)
        values.update(extra)
        if d.status and d.status != job.status:
            values["status"] = d.status
            if d.reason and job.status != JobStatus.TERMINATING.value:
                values["termination_reason"] = d.reason
                values["termination_reason_message"] = d.message
            if d.exit_status is not None:
                values["exit_status"] = d.exit_status
            if d.status == JobStatus.RUNNING.value:
                values["running_at"] = now
            if d.status in _FINISHED:
                values["finished_at"] = now
            elif not onward:
                values["dirty"] = True  # the next step of a new status is due at once
        if then is not None:
            values.update(then.values, status=then.status, finished_at=now)
            values.pop("dirty", None)
        single = (
            d.action == "create_instance"
            and capabilities(self.ctx, snap.placement.offer.backend, job.project_id).single_instance
        )
        async with self._single_lock if single else contextlib.nullcontext():
            await self._write(snap, d, values, token, now, d.status if then else None, onward)
        if values.get("status") in _FINISHED and job.instance_id is not None:
            self.ctx.hub.wake("jobs")  # its queue was marked due in the write
        elif d.action == "wait" and snap.queued and snap.no_capacity and snap.mounts:
            await self.volumes.note_waiting(job, snap.no_capacity, now)
        elif d.action == "yield" and snap.outranked and d.message:
            await self._yield(snap.outranked[0], job, d.message, now)
        if "status" in values and not onward:
            self.ctx.hub.wake("runs")  # (after an onward step: the next one's write wakes it)
        if d.action == "create_instance":
            self.ctx.hub.wake("instances")
        if d.action == "assign" and not onward:
            self.ctx.hub.wake("jobs")

    async def _yield(self, rival: Rival, job: t.Job, message: str, now: datetime) -> None:
        """The job ahead places now (one in this claim places anyway), and the one that
        waits says why, once per reason (`dstack event`)."""
        if not rival.in_batch:
            await self.mark_due([rival.job_id])
        await self.volumes.note_waiting(job, message, now)

    async def _write(
        self,
        snap: Snapshot,
        d: Decision,
        values: dict[str, Any],
        token: str,
        now: datetime,
        via: str | None = None,
        onward: bool = False,
    ) -> None:
        async def write(s: Any) -> None:
            fleet_id = values.pop("_fleet_id", None)
            await self.guarded_update(s, snap.job.id, token, values, now, keep_lease=onward)
            if "status" in values:
                await note_status(s, snap.job, values, now, fleet_id, d.event, via=via)
            if values.get("status") in _FINISHED and snap.job.volumes:
                await self.volumes.last_used(s, snap.job, now)
            if values.get("status") in _FINISHED and snap.job.instance_id is not None:
                # Only a job that held an instance frees blocks for the queue.
                await mark_queue_due(s, snap.job.project_id)

        if d.action not in ("assign", "create_instance"):
            # Only this row's own columns (and its run's mark and events): shared with the
            # other passes writing now, one commit (shared_writes.py).
            await self.shared.run(write)
            return
        async with self.ctx.db.session() as s:
            if d.action == "assign":
                await self._reserve(s, snap, values, now, token)
            else:
                await self._add_instance(s, snap, values, now, token)
            await write(s)
            await s.commit()

    async def _reserve(
        self, s: Any, snap: Snapshot, values: dict[str, Any], now: datetime, token: str
    ) -> None:
        """Take blocks on an existing instance. The instance's row is written first (its
        version bumped, while it is still idle): that write waits for the database's write
        lock (Postgres: the row's lock), so every reservation of this instance, and an
        idle-timeout termination's compare-and-swap on its version, is ordered after the
        ones before it, and the blocks are counted below only once the earlier reservations
        are committed. (A compare-and-swap on a version read before that lock let one pass of
        a claim's batch through and sent every other one placed there back to the queue.)"""
        c = snap.placement
        res = await s.execute(
            update(t.Instance)
            .where(
                t.Instance.id == c.instance_id,
                t.Instance.status == InstanceStatus.IDLE.value,
            )
            .values(version=t.Instance.version + 1)
        )
        if res.rowcount != 1:
            await self._release_for_replacement(s, snap.job.id, token)
            raise Requeued("instance changed under the job; retrying placement")
        inst = await s.get(t.Instance, c.instance_id)
        if c.blocks:
            # Placement saw the blocks free in an older snapshot: count them again.
            busy = (await busy_blocks(s, [inst.id])).get(inst.id, 0)
            if busy + c.blocks > inst.total_blocks:
                await self._release_for_replacement(s, snap.job.id, token)
                raise Requeued("the instance's blocks were taken meanwhile; retrying placement")
        values.update(placement_values(self.ctx, snap.spec, snap.mounts, inst, c))
        if not await self.volumes.bind_placed(s, values["volumes"], inst):
            await self._release_for_replacement(s, snap.job.id, token)
            raise Requeued("a directory volume was bound to another machine; retrying placement")

    async def _release_for_replacement(self, s: Any, job_id: str, token: str) -> None:
        """Give the lease back, due at once: the pass ends with `Requeued`, and the loop is
        woken once the row is out of flight."""
        await s.rollback()
        await self.release_in(s, job_id, token, dirty=True)
        await s.commit()

    async def _add_instance(
        self, s: Any, snap: Snapshot, values: dict[str, Any], now: datetime, token: str
    ) -> None:
        c = snap.placement
        single = capabilities(self.ctx, c.offer.backend, snap.job.project_id).single_instance
        if single and c.offer.backend in await live_backend_types(s):
            # Another job created it since this one looked (one host, one agent per server):
            # place again, onto that instance.
            await self._release_for_replacement(s, snap.job.id, token)
            raise Requeued(f"a {c.offer.backend} instance appeared; retrying placement")
        fleet = await s.get(t.Fleet, c.fleet_id)
        conf = fleet_conf(fleet)
        num = await next_instance_num(s, fleet.id)
        inst = t.Instance(
            id=str(uuid.uuid4()),
            project_id=snap.project.id,
            fleet_id=fleet.id,
            instance_num=num,
            name=f"{fleet.name}-{num}",
            backend=c.offer.backend,
            region=c.offer.region,
            status=InstanceStatus.PENDING.value,
            offer=c.offer.model_dump_json(),
            price=c.offer.price,
            total_blocks=total_blocks(conf, c.offer),
            provisioning_job_id=snap.job.id,
            idle_duration=idle_duration(conf, snap.run),
            created_at=now,
            last_processed_at=now,
            dirty=True,
            # One live instance of such a backend per database, whichever server replica
            # places it (the check above saw none; a replica may have inserted one since).
            single_key=c.offer.backend if single else None,
        )
        s.add(inst)
        try:
            await s.flush()
        except IntegrityError as e:
            if not single:
                raise
            await self._release_for_replacement(s, snap.job.id, token)
            raise Requeued(f"another server created the {c.offer.backend} instance") from e
        events.record(
            s,
            project_id=snap.project.id,
            target_type="instance",
            target_id=inst.id,
            target_name=inst.name,
            message=f"Instance created for job {snap.job.job_name}",
            now=now,
        )
        values.update(placement_values(self.ctx, snap.spec, snap.mounts, inst, c))
