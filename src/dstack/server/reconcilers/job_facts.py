"""Facts about a job's host and run that the job worker reads: the replica's peers, instance
numbering, blocks and idle/inactivity limits. Kept apart from `job_worker.py` so that module
stays the act/apply half of the jobs state machine."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from dstack.models.offers import InstanceOfferWithAvailability
from dstack.models.profiles import UtilizationPolicy
from dstack.models.runs import JobStatus, RunSpec, TriedOffer
from dstack.server.db import tables as t
from dstack.server.reconcilers.utilization import GpuSample, utilization_violation
from dstack.server.services import events
from dstack.server.services.fleet_nodes import total_blocks
from dstack.server.services.metrics import gpu_utils

__all__ = ["total_blocks"]


async def replica_peers(s: Any, job: t.Job) -> list[t.Job]:
    """The latest submission of every job of this job's replica, by job_num."""
    rows = (
        await s.execute(
            select(t.Job).where(t.Job.run_id == job.run_id, t.Job.replica_num == job.replica_num)
        )
    ).scalars()
    latest: dict[int, t.Job] = {}
    for j in rows:
        if j.job_num not in latest or j.submission_num > latest[j.job_num].submission_num:
            latest[j.job_num] = j
    return [latest[k] for k in sorted(latest)]


def startup_order(run: t.Run) -> str | None:
    return RunSpec.model_validate_json(run.run_spec).configuration.get("startup_order")


def startup_blocked(order: str | None, job_num: int, running: list[bool]) -> bool:
    """`startup_order`: must node `job_num` wait for its peers (`running`, by rank)?
    `master-first` (and `any`, the default, which starts the master first too): workers wait
    for the master. `workers-first`: the master waits for every worker; workers do not wait."""
    if order == "workers-first":
        return job_num == 0 and not all(running[1:])
    return job_num > 0 and not running[0]


async def cluster_ips(s: Any, job: t.Job, nodes: int, run: t.Run | None = None) -> list[str] | None:
    """Internal IPs of every node of the job's replica by rank, once all are placed and the
    job's turn has come (`startup_blocked`, by the run's `startup_order`). None until then."""
    order = startup_order(run) if run is not None else None
    peers = await replica_peers(s, job)
    if len(peers) < nodes or any(not p.instance_id for p in peers):
        return None
    if startup_blocked(order, job.job_num, [p.running_at is not None for p in peers]):
        return None
    ips = []
    for p in peers:
        inst = await s.get(t.Instance, p.instance_id)
        info = json.loads(inst.host_info or "{}") if inst else {}
        ips.append(info.get("internal_ip") or (info.get("addresses") or ["127.0.0.1"])[0])
    return ips


async def next_instance_num(s: Any, fleet_id: str) -> int:

    n = (
        await s.execute(
            select(func.max(t.Instance.instance_num)).where(t.Instance.fleet_id == fleet_id)
        )
    ).scalar()
    return 0 if n is None else n + 1


def idle_duration(conf: dict[str, Any], run: t.Run) -> int | None:
    """A job-provisioned instance lives idle for the shorter of the fleet's and the run's."""
    run_conf = RunSpec.model_validate_json(run.run_spec).configuration
    candidates = [
        v for v in (conf.get("idle_duration"), run_conf.get("idle_duration")) if v is not None
    ]
    if not candidates:
        return 300
    if all(v == -1 for v in candidates):
        return -1
    return min(v for v in candidates if v != -1)


def inactivity_duration(run: t.Run) -> int | None:
    """A dev environment's `inactivity_duration` in seconds (None: off)."""
    conf = RunSpec.model_validate_json(run.run_spec).configuration
    if conf.get("type") != "dev-environment":
        return None
    value = conf.get("inactivity_duration")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def utilization_policy(run: t.Run) -> UtilizationPolicy | None:
    """The run's `utilization_policy` (configuration, else profile); None when unset."""
    spec = RunSpec.model_validate_json(run.run_spec)
    raw = spec.configuration.get("utilization_policy") or (spec.profile or {}).get(
        "utilization_policy"
    )
    return UtilizationPolicy.model_validate(raw) if raw else None


async def utilization_check(s: Any, job: t.Job, run: t.Run, now: datetime) -> str | None:
    """Why the running job breaks its run's utilization_policy (utilization.py), or None."""
    policy = utilization_policy(run)
    if policy is None or job.running_at is None:
        return None
    since = now - timedelta(seconds=policy.time_window)
    points = await gpu_utils(s, job.id, since)
    samples = [GpuSample(at, utils) for at, utils in points]
    return utilization_violation(
        policy.min_gpu_utilization, policy.time_window, samples, job.running_at, now
    )


def offer_of(inst: t.Instance) -> InstanceOfferWithAvailability:
    return InstanceOfferWithAvailability.model_validate_json(inst.offer or "{}")


def is_spot(inst: t.Instance | None) -> bool:
    if inst is None or not inst.offer:
        return False
    return offer_of(inst).instance.resources.spot


def tried_offers(job: t.Job) -> tuple[TriedOffer, ...]:
    return tuple(TriedOffer.model_validate(o) for o in json.loads(job.tried_offers or "[]"))


def as_tried(offer: InstanceOfferWithAvailability) -> TriedOffer:
    return TriedOffer(
        backend=offer.backend,
        region=offer.region,
        instance_type=offer.instance.name,
        spot=offer.instance.resources.spot,
        price=offer.price,
    )


def new_instance_offer(inst: t.Instance | None, job: t.Job) -> TriedOffer | None:
    """The offer of the job's instance when it was created for this job (None: a pool
    instance the job was placed on, or none)."""
    if inst is None or not inst.offer or inst.provisioning_job_id != job.id:
        return None
    return as_tried(offer_of(inst))


async def note_status(
    s: Any,
    job: t.Job,
    values: dict[str, Any],
    now: datetime,
    fleet_id: str | None,
    event: str | None,
    *,
    via: str | None = None,
) -> None:
    """A job's status change, in the transaction that writes it: the run is told (and takes
    the fleet its first job landed in) and the change is an event. `via`: the job passed
    through this status in the same write (jobs.settled_at_once): one event per step."""
    if fleet_id:
        await s.execute(
            update(t.Run)
            .where(t.Run.id == job.run_id, t.Run.fleet_id.is_(None))
            .values(fleet_id=fleet_id)
        )
    await s.execute(update(t.Run).where(t.Run.id == job.run_id).values(dirty=True))
    reason = values.get("termination_reason")
    steps = [job.status, via, values["status"]] if via else [job.status, values["status"]]
    for i, (before, after) in enumerate(zip(steps, steps[1:], strict=False)):
        msg = f"Job status changed {before.upper()} -> {after.upper()}"
        if event and i == 0:
            msg = f"{msg}: {event}"
        if reason and i == 0:
            msg += f". Termination reason: {reason.upper()}"
            if values.get("termination_reason_message"):
                msg += f" ({values['termination_reason_message']})"
        events.record(
            s,
            project_id=job.project_id,
            target_type="job",
            target_id=job.id,
            target_name=job.job_name,
            message=msg,
            now=now,
            within_run_id=job.run_id,
        )


def lost_as(inst: t.Instance | None) -> str | None:
    """How the backend said the jobs of the host it lost end (`HostGone.job_reason`, kept in
    the host's record); None: as an interruption."""
    if inst is None or not inst.remote_connection:
        return None
    value = json.loads(inst.remote_connection).get("lost_as")
    return value if isinstance(value, str) else None


_QUEUE_MARKED = "jobs.queue_marked"  # session.info: projects whose queue this session marked


async def mark_queue_due(s: Any, project_id: str) -> None:
    """A job released its blocks: queued jobs of the project try to place again now (rows
    already due are not written again). Written in the transaction that ends the job, once
    per project and transaction; the caller wakes the job loop after the commit."""
    marked = s.info.setdefault(_QUEUE_MARKED, set())
    if project_id in marked:
        return
    marked.add(project_id)
    await s.execute(
        update(t.Job)
        .where(
            t.Job.project_id == project_id,
            t.Job.status == JobStatus.SUBMITTED.value,
            t.Job.dirty.is_(False),
        )
        .values(dirty=True)
    )
