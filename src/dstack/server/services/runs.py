"""Run operations called by the routers: plan, stop, delete, get, list (apply, in-place
updates and replacements are in `run_apply.py`).

User actions are requests, not mutations of a running state machine: `stop` records
`stop_requested` and wakes the run reconciler, which carries it out.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Select, and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import (
    ConfigurationError,
    ResourceNotExistsError,
    ServerClientError,
)
from dstack.models.configurations import parse_configuration
from dstack.models.runs import (
    JobPlan,
    JobStatus,
    Run,
    RunPlan,
    RunSpec,
    RunStatus,
)
from dstack.models.wire import utcnow
from dstack.server.db import tables as t
from dstack.server.scheduler.placement import Ranking
from dstack.server.scheduler.ranking import rank
from dstack.server.services import events
from dstack.server.services.context import ServerContext
from dstack.server.services.job_volumes import volume_locations, with_volumes
from dstack.server.services.jobspecs import build_job_specs
from dstack.server.services.named_config import refuse_unsupported
from dstack.server.services.names import invalid_name_message, is_valid_name
from dstack.server.services.plan_notes import (
    field_warnings,
    no_offer_reasons,
    refuse_unknown_instances,
    unique_offers,
)
from dstack.server.services.pool import load_pool, requirements_for
from dstack.server.services.pubkeys import check_ssh_key_pub
from dstack.server.services.repos import without_creds
from dstack.server.services.runs_view import run_model
from dstack.server.services.runtime_fields import check_runtime_fields
from dstack.server.services.secrets import check_run_secrets

RUN_TYPES = ("dev-environment", "task", "service")
ACTIVE_RUN_STATUSES = tuple(s.value for s in RunStatus if not s.is_finished())


def parse_run_configuration(spec: RunSpec) -> Any:
    try:
        conf = parse_configuration(spec.configuration)
    except ConfigurationError as e:
        raise ServerClientError(
            str(e),
            field=f"run_spec.configuration.{e.path or ''}".rstrip("."),
            code="invalid_configuration",
        ) from e
    if conf.type not in RUN_TYPES:
        raise ServerClientError(
            f"Configuration type {conf.type} is not a run (use dev-environment, task or service)",
            field="run_spec.configuration.type",
        )
    unset = [k for k, v in (conf.env or {}).items() if v is None]
    if unset:
        raise ServerClientError(
            f"Environment variable {unset[0]} is not set",
            field=f"run_spec.configuration.env.{unset[0]}",
        )
    refuse_unsupported(conf, "run_spec.configuration.")
    _check_groups(conf)
    check_runtime_fields(conf)
    return conf


def _check_groups(conf: Any) -> None:
    """Replica groups run with fixed counts; a group that asks to autoscale is refused here
    rather than left at its minimum without a word."""
    if conf.type != "service":
        return
    for i, group in enumerate(getattr(conf, "groups", None) or []):
        if group.replicas.min != group.replicas.max:
            name = group.name or str(i)
            raise ServerClientError(
                f"Replica group {name} has a range of replicas; autoscaling replica groups is "
                "not supported yet: give each group a fixed `replicas`",
                field=f"run_spec.configuration.groups.{i}.replicas",
            )


def check_name(name: str | None) -> None:
    if name is not None and not is_valid_name(name):
        raise ServerClientError(invalid_name_message("run", name), field="run_spec.run_name")


@functools.cache
def _active_run_query() -> Select[Any]:
    """Built once (on first use, not at import): building the expression took as long as
    running it, on every `runs/apply`."""
    return select(t.Run).where(
        t.Run.project_id == bindparam("project_id"),
        t.Run.run_name == bindparam("name"),
        t.Run.deleted.is_(False),
        t.Run.status.in_(ACTIVE_RUN_STATUSES),
    )


async def active_run(s: AsyncSession, project_id: str, name: str) -> t.Run | None:
    params = {"project_id": project_id, "name": name}
    return (await s.execute(_active_run_query(), params)).scalar_one_or_none()


async def latest_run(s: AsyncSession, project_id: str, name: str) -> t.Run | None:
    return (
        await s.execute(
            select(t.Run)
            .where(t.Run.project_id == project_id, t.Run.run_name == name, t.Run.deleted.is_(False))
            .order_by(t.Run.submitted_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def to_model(
    s: AsyncSession,
    run: t.Run,
    project: t.Project,
    submissions_limit: int | None = None,
    *,
    connection_info: bool = False,
) -> Run:
    models = await to_models(
        s, [run], {project.id: project}, submissions_limit, connection_info=connection_info
    )
    return models[0]


async def to_models(
    s: AsyncSession,
    runs: list[t.Run],
    projects: dict[str, t.Project],
    submissions_limit: int | None = None,
    *,
    connection_info: bool = False,
) -> list[Run]:
    """The API view of `runs` in a constant number of queries (jobs, users, fleets, instance
    notes), whatever the page size: on SQLite each query is a hop to aiosqlite's thread, and
    three per run made a page of 100 cost ~300 of them."""
    if not runs:
        return []
    run_ids = [r.id for r in runs]
    jobs_by_run: dict[str, list[t.Job]] = {rid: [] for rid in run_ids}
    for job in (await s.execute(select(t.Job).where(t.Job.run_id.in_(run_ids)))).scalars():
        jobs_by_run[job.run_id].append(job)
    user_ids = {r.user_id for r in runs}
    names = dict(
        (await s.execute(select(t.User.id, t.User.name).where(t.User.id.in_(user_ids)))).all()
    )
    fleet_ids = {r.fleet_id for r in runs if r.fleet_id}
    fleets = (
        {
            f.id: f
            for f in (await s.execute(select(t.Fleet).where(t.Fleet.id.in_(fleet_ids)))).scalars()
        }
        if fleet_ids
        else {}
    )
    notes = await instance_notes(s, [j for jobs in jobs_by_run.values() for j in jobs])
    return [
        run_model(
            run,
            jobs_by_run[run.id],
            project_name=projects[run.project_id].name,
            user_name=names.get(run.user_id, ""),
            fleet=fleets.get(run.fleet_id) if run.fleet_id else None,
            submissions_limit=submissions_limit,
            connection_info=connection_info,
            instance_notes=notes,
        )
        for run in runs
    ]


async def instance_notes(s: AsyncSession, jobs: list[t.Job]) -> dict[str, str]:
    """Why the instances of provisioning jobs are not up yet, as their backends said."""
    provisioning = JobStatus.PROVISIONING.value
    ids = [j.instance_id for j in jobs if j.instance_id and j.status == provisioning]
    if not ids:
        return {}
    rows = await s.execute(
        select(t.Instance.id, t.Instance.status_message).where(
            t.Instance.id.in_(ids), t.Instance.status_message.is_not(None)
        )
    )
    return {iid: note for iid, note in rows.all()}


async def get_plan(
    ctx: ServerContext,
    s: AsyncSession,
    user: t.User,
    project: t.Project,
    spec: RunSpec,
    max_offers: int | None,
) -> RunPlan:
    check_name(spec.run_name)
    conf = parse_run_configuration(spec)
    check_ssh_key_pub(spec.ssh_key_pub)  # the plan refuses what the apply would
    await check_run_secrets(s, project.id, conf)
    spec = without_creds(spec.model_copy(update={"configuration": conf.model_dump(mode="json")}))
    job_specs = build_job_specs(spec.run_name or "run", conf, spec.repo_code_hash)
    pool = await load_pool(ctx, s, project.id)
    job_plans = []
    for js in job_specs[:1] if len({j.job_num for j in job_specs}) == 1 else job_specs:
        mounts = await volume_locations(ctx, s, project.id, js, None)
        req = requirements_for(conf, js.requirements)
        refuse_unknown_instances(req, pool.instances)
        ranking = rank(with_volumes(req, mounts), pool.instances, pool.capacity)
        if mounts and not ranking.candidates:
            refuse_misplaced_volumes(rank(req, pool.instances, pool.capacity), ranking)
        if ranking.field_refusals and not ranking.candidates:
            raise ServerClientError(
                "No instance can run this configuration as written: "
                + "; ".join(ranking.field_refusals[:5]),
                field="configuration",
            )
        offers = unique_offers(ranking.candidates)
        notes = [] if offers else no_offer_reasons(ctx, project.id, req, pool.notes, ranking)
        job_plans.append(
            JobPlan(
                job_spec=js,
                offers=offers[: max_offers or 50],
                total_offers=len(offers),
                max_price=max((o.price for o in offers), default=None),
                notes=notes,
                warnings=field_warnings(conf, ranking),
            )
        )
    current = None
    if spec.run_name:
        existing = await latest_run(s, project.id, spec.run_name)
        if existing is not None:
            current = await to_model(s, existing, project, submissions_limit=1)
    action = "update" if current is not None and not current.status.is_finished() else "create"
    return RunPlan(
        project_name=project.name,
        user=user.name,
        run_spec=spec,
        effective_run_spec=spec,
        job_plans=job_plans,
        current_resource=current,
        action=action,
    )


def refuse_misplaced_volumes(without: Ranking, ranking: Ranking) -> None:
    """Places exist for the job but none where its volumes are: refused in the plan, saying
    where each place and volume is, rather than a run that can never start."""
    if not without.candidates:
        return
    shown = "; ".join(r for r in ranking.rejections if "volume " in r)
    raise ServerClientError(
        f"No instance or offer is where the run's volumes are: {shown}",
        field="configuration.volumes",
    )


async def get_run_row(
    s: AsyncSession, project: t.Project, name: str | None = None, run_id: str | None = None
) -> t.Run:
    if run_id:
        run = await s.get(t.Run, run_id)
        if run is None or run.project_id != project.id:
            raise ResourceNotExistsError(f"Run {run_id} not found", code="resource_not_exists")
        return run
    if not name:
        raise ServerClientError("Specify run_name or id", field="run_name")
    run = await latest_run(s, project.id, name)
    if run is None:
        raise ResourceNotExistsError(f"Run {name} not found", code="resource_not_exists")
    return run


async def stop_runs(
    ctx: ServerContext,
    s: AsyncSession,
    user: t.User,
    project: t.Project,
    names: list[str],
    abort: bool,
) -> None:
    now = utcnow()
    for name in names:
        run = await _stop_one(s, project, name, abort)
        if run is None:
            continue
        message = "Run abort requested" if abort else "Run stop requested"
        if run.replacement_spec:
            message += "; the pending replacement is cancelled"
        events.run_event(s, run, message, now, actor=user.name)
    await s.commit()
    ctx.hub.wake("runs")


async def _stop_one(s: AsyncSession, project: t.Project, name: str, abort: bool) -> t.Run | None:
    """Record the stop on the name's active run; None when nothing of that name is active.

    A request, not a mutation: the run reconciler carries it out. `version` is not bumped so a
    reconciler pass in flight still applies; it sees the flag on its next pass. Stopping the
    name also cancels a replacement `apply --force` left pending on it. The write holds only
    while the run is active: if the reconciler finished it (and submitted its replacement)
    after we read it, the request goes to the run that now holds the name."""
    for _ in range(3):
        run = await get_run_row(s, project, name)
        if RunStatus(run.status).is_finished():
            return None
        res = await s.execute(
            update(t.Run)
            .where(t.Run.id == run.id, t.Run.status.in_(ACTIVE_RUN_STATUSES))
            .values(
                stop_requested=True,
                stop_abort=t.Run.stop_abort | abort,
                replacement_spec=None,
                replacement_user_id=None,
                dirty=True,
            )
        )
        if res.rowcount == 1:
            return run
        await s.refresh(run)
    return None


async def delete_runs(s: AsyncSession, project: t.Project, names: list[str]) -> None:
    rows = []
    for name in names:
        run = await get_run_row(s, project, name)
        if not RunStatus(run.status).is_finished():
            raise ServerClientError(
                f"Run {name} is not finished; stop it first", field="runs_names"
            )
        rows.append(run)
    for run in rows:
        run.deleted = True
    await s.commit()


def page_query(
    q: Select[Any],
    project_ids: list[str] | BindParameter[Any],
    *,
    only_active: bool,
    limit: int | BindParameter[Any],
    ascending: bool,
    prev_submitted_at: datetime | BindParameter[Any] | None,
    prev_run_id: str | BindParameter[Any] | None,
) -> Select[Any]:
    """`q` (over runs) narrowed to one runs/list page: the projects' live runs in submission
    order, `id` breaking ties, after the cursor (`prev_submitted_at`, `prev_run_id`: the last
    run of the previous page). The `ix_runs_list` index serves the range and the order. The
    values may be bind parameters: `runs_page` builds one statement per shape of page."""
    q = q.where(t.Run.project_id.in_(project_ids), t.Run.deleted == False)  # noqa: E712
    if only_active:
        q = q.where(t.Run.status.in_(ACTIVE_RUN_STATUSES))
    if prev_submitted_at is not None:
        at, rid = t.Run.submitted_at, t.Run.id
        if prev_run_id is None:
            q = q.where(at > prev_submitted_at if ascending else at < prev_submitted_at)
        else:
            # The inclusive bound is implied by the OR; stated, it is the index range.
            past = rid > prev_run_id if ascending else rid < prev_run_id
            beyond = at > prev_submitted_at if ascending else at < prev_submitted_at
            bound = at >= prev_submitted_at if ascending else at <= prev_submitted_at
            q = q.where(bound, or_(beyond, and_(at == prev_submitted_at, past)))
    if ascending:
        return q.order_by(t.Run.submitted_at.asc(), t.Run.id.asc()).limit(limit)
    return q.order_by(t.Run.submitted_at.desc(), t.Run.id.desc()).limit(limit)


async def list_runs(
    s: AsyncSession,
    user: t.User,
    project_ids: dict[str, t.Project],
    *,
    only_active: bool,
    limit: int,
    job_submissions_limit: int | None,
    ascending: bool,
    prev_submitted_at: datetime | None,
    prev_run_id: str | None,
) -> list[Run]:
    """One page as models, every run built afresh (runs/list serves the same page from
    `runs_page.list_page`, which reuses unchanged runs' JSON)."""
    q = page_query(
        select(t.Run),
        list(project_ids),
        only_active=only_active,
        limit=limit,
        ascending=ascending,
        prev_submitted_at=prev_submitted_at,
        prev_run_id=prev_run_id,
    )
    rows = list((await s.execute(q)).scalars())
    return await to_models(s, rows, project_ids, job_submissions_limit)
