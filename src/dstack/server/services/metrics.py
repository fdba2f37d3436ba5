"""Job metrics on the server: storing the agents' samples, answering the metrics route,
and deleting old points.

Samples arrive with the job list the job reconciler polls anyway (`host_jobs.py`). Points are
kept `metrics_running_ttl_seconds` while a job runs (a utilization_policy window longer than
that is refused at submission, so the policy always sees its whole window) and
`metrics_finished_ttl_seconds` after it finished.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.errors import ResourceNotExistsError, ServerClientError
from dstack.models import metrics as m
from dstack.models.runs import JobStatus
from dstack.server.db import tables as t
from dstack.server.db.session import Database

MAX_LIMIT = 10_000
_FINISHED = tuple(s.value for s in JobStatus if s.is_finished())


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else None


def _gpu(reading: Any) -> dict[str, float | None]:
    reading = reading if isinstance(reading, dict) else {}
    return {key: _number(reading.get(key)) for key in m.GPU_SERIES.values()}


def point_row(job_id: str, sample: dict[str, Any]) -> t.JobMetricsPoint | None:
    """A row from one agent sample; None when its timestamp is not a number. Unknown or
    malformed values are dropped, never trusted (the agent is another machine)."""
    ts = _number(sample.get("ts"))
    if ts is None or ts <= 0:
        return None
    gpus = sample.get("gpus") if isinstance(sample.get("gpus"), list) else []
    return t.JobMetricsPoint(
        job_id=job_id,
        timestamp_ms=int(ts * 1000),
        cpu_usage_percent=_number(sample.get("cpu_usage_percent")),
        memory_usage_bytes=_int(sample.get("memory_usage_bytes")),
        memory_working_set_bytes=_int(sample.get("memory_working_set_bytes")),
        gpus=json.dumps([_gpu(g) for g in gpus[:64]]),
    )


async def store_samples(db: Database, samples: dict[str, list[dict[str, Any]]]) -> int:
    """Store new samples of known jobs; a sample already stored (same job and time) is
    skipped. Returns how many rows were added."""
    async with db.session() as s:
        known = set(
            (await s.execute(select(t.Job.id).where(t.Job.id.in_(list(samples))))).scalars()
        )
        rows = {}
        for job_id in known:
            for sample in samples[job_id]:
                row = point_row(job_id, sample) if isinstance(sample, dict) else None
                if row is not None:
                    rows[(job_id, row.timestamp_ms)] = row
        if not rows:
            return 0
        existing = await _existing(s, rows)
        fresh = [r for key, r in rows.items() if key not in existing]
        s.add_all(fresh)
        try:
            await s.commit()
        except IntegrityError:  # another server replica stored them first
            await s.rollback()
            return 0
        return len(fresh)


async def _existing(s: AsyncSession, rows: dict[tuple[str, int], Any]) -> set[tuple[str, int]]:
    by_job: dict[str, list[int]] = {}
    for job_id, ts in rows:
        by_job.setdefault(job_id, []).append(ts)
    found = set()
    for job_id, stamps in by_job.items():
        q = select(t.JobMetricsPoint.timestamp_ms).where(
            t.JobMetricsPoint.job_id == job_id, t.JobMetricsPoint.timestamp_ms >= min(stamps)
        )
        found.update((job_id, ts) for ts in (await s.execute(q)).scalars())
    return found


async def load_points(
    s: AsyncSession,
    job_id: str,
    limit: int,
    after: datetime | None = None,
    before: datetime | None = None,
) -> list[t.JobMetricsPoint]:
    """The newest `limit` points of the job in (after, before), oldest first."""
    q = select(t.JobMetricsPoint).where(t.JobMetricsPoint.job_id == job_id)
    if after is not None:
        q = q.where(t.JobMetricsPoint.timestamp_ms > _ms(after))
    if before is not None:
        q = q.where(t.JobMetricsPoint.timestamp_ms < _ms(before))
    q = q.order_by(t.JobMetricsPoint.timestamp_ms.desc()).limit(limit)
    return list(reversed((await s.execute(q)).scalars().all()))


def to_series(points: Sequence[t.JobMetricsPoint]) -> m.JobMetrics:
    """Points as named series; a value a sample lacks leaves that series without the point,
    and a GPU's series has only the points where the job had that GPU."""
    series: dict[str, tuple[list[datetime], list[float]]] = {}

    def add(name: str, at: datetime, value: float | None) -> None:
        if value is not None:
            stamps, values = series.setdefault(name, ([], []))
            stamps.append(at)
            values.append(value)

    for point in points:
        at, gpus = _dt(point.timestamp_ms), json.loads(point.gpus or "[]")
        add(m.CPU_USAGE_PERCENT, at, point.cpu_usage_percent)
        add(m.MEMORY_USAGE_BYTES, at, point.memory_usage_bytes)
        add(m.MEMORY_WORKING_SET_BYTES, at, point.memory_working_set_bytes)
        add(m.GPUS_DETECTED_NUM, at, len(gpus))
        for i, gpu in enumerate(gpus):
            for prefix, key in m.GPU_SERIES.items():
                add(m.gpu_series_name(prefix, i), at, gpu.get(key))
    names = [
        m.CPU_USAGE_PERCENT,
        m.MEMORY_USAGE_BYTES,
        m.MEMORY_WORKING_SET_BYTES,
        m.GPUS_DETECTED_NUM,
    ]
    names += sorted(n for n in series if n not in names)
    return m.JobMetrics(
        metrics=[
            m.Metric(name=n, timestamps=series[n][0], values=series[n][1])
            for n in names
            if n in series
        ]
    )


async def find_job(s: AsyncSession, run: t.Run, replica_num: int, job_num: int) -> t.Job:
    """The latest submission of (replica, job) of the run."""
    job = (
        await s.execute(
            select(t.Job)
            .where(
                t.Job.run_id == run.id, t.Job.replica_num == replica_num, t.Job.job_num == job_num
            )
            .order_by(t.Job.submission_num.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if job is None:
        raise ResourceNotExistsError(
            f"Run {run.run_name} has no job with replica_num={replica_num} job_num={job_num}",
            code="resource_not_exists",
        )
    return job


async def gpu_utils(
    s: AsyncSession, job_id: str, since: datetime
) -> list[tuple[datetime, tuple[float | None, ...]]]:
    """(time, utilization % of each GPU of the job) of its points since `since`, oldest first."""
    q = (
        select(t.JobMetricsPoint.timestamp_ms, t.JobMetricsPoint.gpus)
        .where(t.JobMetricsPoint.job_id == job_id, t.JobMetricsPoint.timestamp_ms >= _ms(since))
        .order_by(t.JobMetricsPoint.timestamp_ms)
    )
    out = []
    for ts, gpus in (await s.execute(q)).all():
        readings = json.loads(gpus or "[]")
        out.append((_dt(ts), tuple(_number(g.get("util")) for g in readings)))
    return out


def check_utilization_window(conf: Any, running_ttl: float) -> None:
    """A policy window longer than the points are kept could never be judged: refused."""
    policy = getattr(conf, "utilization_policy", None)
    if policy is not None and policy.time_window > running_ttl:
        raise ServerClientError(
            f"utilization_policy.time_window ({policy.time_window}s) is longer than the "
            f"server keeps metrics of running jobs ({int(running_ttl)}s, "
            "DSTACK_SERVER_METRICS_RUNNING_TTL_SECONDS)",
            field="run_spec.configuration.utilization_policy.time_window",
        )


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ServerClientError(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    return limit


async def delete_old(
    s: AsyncSession, now: datetime, running_ttl: float, finished_ttl: float
) -> int:
    """Delete the points of running jobs older than `running_ttl` and every point of a job
    that finished more than `finished_ttl` ago."""
    running_cut = _ms(now - timedelta(seconds=running_ttl))
    finished_cut = now - timedelta(seconds=finished_ttl)
    finished_long_ago = select(t.Job.id).where(
        t.Job.status.in_(_FINISHED), t.Job.finished_at < finished_cut
    )
    not_finished = select(t.Job.id).where(t.Job.status.not_in(_FINISHED))
    result = await s.execute(
        delete(t.JobMetricsPoint).where(
            or_(
                t.JobMetricsPoint.job_id.in_(finished_long_ago),
                and_(
                    t.JobMetricsPoint.job_id.in_(not_finished),
                    t.JobMetricsPoint.timestamp_ms < running_cut,
                ),
            )
        )
    )
    await s.commit()
    return int(result.rowcount or 0)
