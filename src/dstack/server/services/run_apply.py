"""`apply`: submit a run, update a service in place, or replace an active run, each in one
call.

A replacement is a request, not a mutation of a running state machine: `apply` with `force`
against an active run that cannot be updated in place records the new spec on that run
(`replacement_spec`) and asks it to stop, in one call; the run reconciler submits the new run
when the old one has finished (reconcilers/runs.py says why a new run row and not a new
deployment). Nothing is lost if the client or the server dies in between.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import (
    ResourceExistsError,
    ServerClientError,
    StaleResourceError,
    stale_plan_message,
)
from dstack.models.cron import next_fire
from dstack.models.runs import ApplyRunPlanInput, JobSpec, JobStatus, Run, RunSpec, RunStatus
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.db.core_rows import insert_rows, row_values
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.job_volumes import check_run_volumes
from dstack.server.services.jobspecs import build_job_specs
from dstack.server.services.metrics import check_utilization_window
from dstack.server.services.names import generate_name
from dstack.server.services.plan_notes import refuse_unknown_instances
from dstack.server.services.pool import load_pool_rows, requirements_for
from dstack.server.services.pubkeys import check_ssh_key_pub
from dstack.server.services.repos import seal_creds
from dstack.server.services.runs import (
    ACTIVE_RUN_STATUSES,
    active_run,
    check_name,
    parse_run_configuration,
    to_model,
)
from dstack.server.services.runs_view import run_model
from dstack.server.services.secrets import check_run_secrets


async def apply_plan(
    ctx: ServerContext,
    s: AsyncSession,
    user: t.User,
    project: t.Project,
    plan: ApplyRunPlanInput,
    force: bool,
) -> Run:
    spec = seal_creds(plan.run_spec, ctx.box)
    check_name(spec.run_name)
    conf = parse_run_configuration(spec)
    check_ssh_key_pub(spec.ssh_key_pub)
    await check_run_secrets(s, project.id, conf)
    check_utilization_window(conf, ctx.settings.metrics_running_ttl_seconds)
    if spec.repo_code_hash is not None:
        code = await s.get(t.Code, (project.id, spec.repo_code_hash))
        if code is None:
            raise ServerClientError(
                f"Code {spec.repo_code_hash} was not uploaded; upload it first",
                field="plan.run_spec.repo_code_hash",
            )
    for archive in spec.file_archives:
        if await s.get(t.Code, (project.id, archive.id)) is None:
            raise ServerClientError(
                f"The archive of files entry {archive.path} was not uploaded; upload it first",
                field="plan.run_spec.file_archives",
            )
    if spec.run_name:
        active = await active_run(s, project.id, spec.run_name)
        if not force:
            check_fresh(spec.run_name, plan, active)
        if active is not None and _priority_only(active, spec, conf):
            return await _update_priority(ctx, s, user, project, active, spec, conf)
        if active is not None and _updatable(active, conf, plan):
            return await _update_service(ctx, s, user, project, active, spec, conf)
        if active is not None and force:
            old = await _request_replacement(ctx, s, user, project, active, spec, conf)
            if old is not None:
                return old
            # It finished between the lookup and the request: the name is free, submit now.
        elif active is not None:
            raise ResourceExistsError(
                f"Run {spec.run_name} is already active ({active.status}). "
                "Stop it first, or apply with --force to stop and replace it.",
                field="plan.run_spec.run_name",
                code="resource_exists",
            )
    else:
        taken = set(
            (
                await s.execute(select(t.Run.run_name).where(t.Run.project_id == project.id))
            ).scalars()
        )
        spec = spec.model_copy(update={"run_name": generate_name(taken)})
    spec = spec.model_copy(update={"configuration": conf.model_dump(mode="json")})
    # Every volume the run names must exist (and not have failed): refused here, by name.
    specs = build_job_specs(spec.run_name, conf, spec.repo_code_hash)
    await check_run_volumes(ctx, s, project.id, specs)
    if getattr(conf, "instances", None):
        rows = await load_pool_rows(ctx, s, project.id)
        refuse_unknown_instances(requirements_for(conf, specs[0].requirements), rows.instances)
    try:
        # The unique index on active (project, name) refuses a concurrent twin at the flush
        # inside _insert_run (Postgres) or at the commit (SQLite): both are the same loss.
        run, jobs = await _insert_run(
            s, user, project.id, spec, conf, utcnow(), "Run submitted", specs
        )
        await s.commit()
    except IntegrityError as e:
        await s.rollback()
        raise ResourceExistsError(
            f"Run {spec.run_name} is already active. Stop it first, or apply with --force.",
            field="plan.run_spec.run_name",
            code="resource_exists",
        ) from e
    ctx.hub.wake(*(("runs", "jobs") if run.dirty else ("jobs",)))
    # Built from the rows just written (nothing else can have changed them yet): no reads.
    return run_model(run, jobs, project_name=project.name, user_name=user.name, fleet=None)


async def _request_replacement(
    ctx: ServerContext,
    s: AsyncSession,
    user: t.User,
    project: t.Project,
    run: t.Run,
    spec: RunSpec,
    conf: Any,
) -> Run | None:
    """Record `spec` as the replacement of the active `run` and ask the run to stop; the run
    reconciler submits the replacement in the transaction that finishes the run. Returns the
    old run as it now stands, or None when it had already finished (nothing recorded).

    The update is conditional on the run being active: against the reconciler's final write
    it is one or the other, so a request never lands on a run that has already ended."""
    now = utcnow()
    spec = spec.model_copy(update={"configuration": conf.model_dump(mode="json")})
    res = await s.execute(
        update(t.Run)
        .where(
            t.Run.id == run.id,
            t.Run.deleted.is_(False),
            t.Run.status.in_(ACTIVE_RUN_STATUSES),
        )
        .values(
            replacement_spec=spec.model_dump_json(),
            replacement_user_id=user.id,
            stop_requested=True,
            dirty=True,
            generation=t.Run.generation + 1,
        )
    )
    if res.rowcount != 1:
        # Nothing was written (the run ended meanwhile); no rollback, which would expire the
        # caller's user and project rows that it goes on to use.
        return None
    again = " (it replaces the replacement requested before)" if run.replacement_spec else ""
    events.run_event(
        s,
        run,
        "Run replacement requested: the run stops, then a new run "
        f"{run.run_name} is submitted with the new configuration{again}",
        now,
        actor=user.name,
    )
    await s.commit()
    await s.refresh(run)
    ctx.hub.wake("runs")
    return await to_model(s, run, project)


async def submit_replacement(s: AsyncSession, old: t.Run, now: datetime) -> t.Run | None:
    """Called by the run reconciler in the transaction that moves `old` to a final status:
    insert the run `apply --force` asked for (re-reading the request, which may have arrived
    after the reconciler's snapshot) and clear the request. None when there was none."""
    spec_json, user_id = (
        await s.execute(
            select(t.Run.replacement_spec, t.Run.replacement_user_id).where(t.Run.id == old.id)
        )
    ).one()
    if not spec_json:
        return None
    await s.execute(
        update(t.Run)
        .where(t.Run.id == old.id)
        .values(replacement_spec=None, replacement_user_id=None)
    )
    user = await s.get(t.User, user_id or old.user_id) or await s.get(t.User, old.user_id)
    try:
        spec = RunSpec.model_validate_json(spec_json)
        conf = parse_run_configuration(spec)
        # Built once here as a check, before anything is inserted (nothing half-written).
        build_job_specs(spec.run_name or old.run_name, conf, spec.repo_code_hash)
    except (ServerClientError, ValueError) as e:
        # Valid at apply time; a server upgrade in between may refuse it. Say so, and let the
        # old run end rather than fail its final write on every pass.
        events.run_event(s, old, f"Run replacement not submitted: {e}", now)
        return None
    run, _ = await _insert_run(
        s, user, old.project_id, spec, conf, now, f"Run submitted, replacing run {old.id}"
    )
    return run


def check_fresh(name: str, plan: ApplyRunPlanInput, active: t.Run | None) -> None:
    """Refuse a plan made against a run that has changed since (another apply updated or
    replaced it, or it ended and another run took the name): applying it would overwrite a
    change its author never saw."""
    planned = plan.current_resource
    if planned is None or active is None:
        return
    current = active.generation or 1
    # A client that predates generations sends none (0): only the identity is checked then.
    if planned.id != active.id or planned.generation not in (0, current):
        raise StaleResourceError(
            stale_plan_message("run", name, planned.generation, current),
            field="plan.current_resource",
            code="stale_plan",
        )


def _priority_only(active: t.Run, spec: RunSpec, conf: Any) -> bool:
    """Only `priority` differs: the queue order changes, nothing about the run itself, so it
    is updated in place for any run type (a queued run keeps its place in its new class)."""
    old = RunSpec.model_validate_json(active.run_spec)
    new_conf = conf.model_dump(mode="json")
    rest = {k: v for k, v in new_conf.items() if k != "priority"}
    old_rest = {k: v for k, v in old.configuration.items() if k != "priority"}
    return (
        rest == old_rest
        and new_conf.get("priority") != old.configuration.get("priority")
        and (spec.repo_code_hash or None) == (old.repo_code_hash or None)
        and not active.stop_requested
    )


async def _update_priority(
    ctx: ServerContext,
    s: AsyncSession,
    user: t.User,
    project: t.Project,
    run: t.Run,
    spec: RunSpec,
    conf: Any,
) -> Run:
    before = run.priority
    after = int(conf.priority or 0)
    spec = spec.model_copy(update={"configuration": conf.model_dump(mode="json")})
    await s.execute(
        update(t.Run)
        .where(t.Run.id == run.id, t.Run.status.in_(ACTIVE_RUN_STATUSES))
        .values(priority=after, run_spec=spec.model_dump_json())
    )
    events.run_event(
        s, run, f"Run priority changed from {before} to {after}", utcnow(), actor=user.name
    )
    await s.commit()
    await s.refresh(run)
    ctx.hub.wake("jobs")
    return await to_model(s, run, project)


def _updatable(active: t.Run, conf: Any, plan: ApplyRunPlanInput) -> bool:
    """A running service updates in place (a rolling deployment) when the client applies
    against it (`current_resource` set); anything else is refused or, with `force`,
    replaced."""
    old = RunSpec.model_validate_json(active.run_spec).configuration
    return (
        conf.type == "service"
        and old.get("type") == "service"
        and plan.current_resource is not None
        and active.status != RunStatus.TERMINATING.value
        and not active.stop_requested
    )


async def _update_service(
    ctx: ServerContext,
    s: AsyncSession,
    user: t.User,
    project: t.Project,
    run: t.Run,
    spec: RunSpec,
    conf: Any,
) -> Run:
    """Record the new spec as the next deployment; the run reconciler rolls the replicas."""
    now = utcnow()
    spec = spec.model_copy(update={"configuration": conf.model_dump(mode="json")})
    seen = run.generation or 1
    res = await s.execute(
        update(t.Run)
        # Conditional on the generation read: of two updates racing from the same plan, the
        # second changes nothing and is refused below instead of overwriting the first.
        .where(t.Run.id == run.id, t.Run.generation == seen)
        .values(
            run_spec=spec.model_dump_json(),
            deployment_num=t.Run.deployment_num + 1,
            generation=t.Run.generation + 1,
            dirty=True,
        )
    )
    if res.rowcount != 1:
        name, run_id = run.run_name, run.id  # read before the rollback expires them
        await s.rollback()
        now_at = await s.scalar(select(t.Run.generation).where(t.Run.id == run_id))
        raise StaleResourceError(
            stale_plan_message("run", name, seen, now_at or seen),
            field="plan.current_resource",
            code="stale_plan",
        )
    events.run_event(
        s, run, f"Run updated in place: deployment {run.deployment_num + 1}", now, actor=user.name
    )
    await s.commit()
    await s.refresh(run)
    ctx.hub.wake("runs")
    return await to_model(s, run, project)


async def _insert_run(
    s: AsyncSession,
    user: t.User,
    project_id: str,
    spec: RunSpec,
    conf: Any,
    now: datetime,
    message: str,
    specs: list[JobSpec] | None = None,
) -> tuple[t.Run, list[t.Job]]:
    """The run and its jobs (`specs`: built already by the caller, else built here)."""
    run = t.Run(
        id=str(uuid.uuid4()),
        project_id=project_id,
        user_id=user.id,
        run_name=spec.run_name,
        run_spec=spec.model_dump_json(),
        status=RunStatus.SUBMITTED.value,
        submitted_at=now,
        last_processed_at=now,
        priority=int(getattr(conf, "priority", 0) or 0),
        dirty=True,
    )
    schedule = getattr(conf, "schedule", None)
    if schedule is not None:
        # Scheduled: pending, no jobs, until the next cron time (the run reconciler submits
        # them then, and re-arms the schedule each time the run ends on its own).
        run.status = RunStatus.PENDING.value
        run.next_triggered_at = next_fire(schedule.cron, now)
        message += f"; waiting for the schedule: next start {run.next_triggered_at}"
    if schedule:
        specs = []
    elif specs is None:
        specs = build_job_specs(spec.run_name, conf, spec.repo_code_hash)
    # A task or dev environment with its jobs submitted has nothing for the run reconciler to
    # decide until a job moves (each job status change marks its run due): no pass now.
    run.dirty = not specs or conf.type == "service"
    row_values(run)  # its defaults on it now: each job copies its `deployment_num`
    jobs = [
        new_job_row(run, js.model_dump_json(), js.replica_num, js.job_num, js.job_name, 0, now)
        for js in specs
    ]
    # Core INSERTs (db/core_rows.py): the same rows, without the ORM's flush; the objects
    # stay out of the session, nothing in it reads them back.
    await insert_rows(s, [run, *jobs, events.run_event_row(run, message, now, actor=user.name)])
    return run, jobs


def new_job_row(
    run: t.Run,
    job_spec_json: str,
    replica_num: int,
    job_num: int,
    job_name: str,
    submission_num: int,
    now: datetime,
) -> t.Job:
    return t.Job(
        id=str(uuid.uuid4()),
        project_id=run.project_id,
        run_id=run.id,
        run_name=run.run_name,
        job_num=job_num,
        replica_num=replica_num,
        job_name=job_name,
        submission_num=submission_num,
        deployment_num=run.deployment_num,
        job_spec=job_spec_json,
        status=JobStatus.SUBMITTED.value,
        submitted_at=now,
        last_processed_at=now,
        dirty=True,
    )
