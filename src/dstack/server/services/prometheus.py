"""The Prometheus exposition of `GET /metrics` (docs/metrics.md): the database's state read
at scrape time (counts by status, instance prices, each running job's latest sample), then
this process's own instruments (`telemetry.py`: proxy requests, reconciler passes).

Read at scrape time rather than kept in gauges: every server replica answers the same
numbers, and nothing is left behind for a run that is gone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dstack.models.instances import InstanceStatus
from dstack.models.runs import JobStatus
from dstack.server.db import tables as t
from dstack.server.services import telemetry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_LABELS = ["project_name", "run_name", "job_name", "replica_num", "job_num"]
GPU_GAUGES = (
    ("dstack_job_gpu_usage_ratio", "GPU utilization (0..1)", "util", 0.01),
    ("dstack_job_gpu_memory_usage_bytes", "GPU memory in use", "memory_used_bytes", 1),
    ("dstack_job_gpu_memory_total_bytes", "GPU memory", "memory_total_bytes", 1),
    ("dstack_job_gpu_power_draw_watts", "GPU power draw", "power_watts", 1),
    ("dstack_job_gpu_temperature_celsius", "GPU temperature", "temperature_celsius", 1),
)


async def _counts(s: AsyncSession, table: Any, live_only: bool = False) -> list[tuple[Any, ...]]:
    q = (
        select(t.Project.name, table.status, func.count())
        .join(t.Project, t.Project.id == table.project_id)
        .group_by(t.Project.name, table.status)
    )
    if hasattr(table, "deleted"):
        q = q.where(table.deleted.is_(False))
    return list((await s.execute(q)).all())


def _count_family(name: str, doc: str, rows: list[tuple[Any, ...]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["project_name", "status"])
    for project, status, count in rows:
        family.add_metric([project, status], count)
    return family


async def _prices(s: AsyncSession) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "dstack_instance_price_dollars_per_hour",
        "Hourly price of each instance that is not terminated",
        labels=["project_name", "fleet_name", "instance_name", "backend", "region"],
    )
    q = (
        select(t.Project.name, t.Fleet.name, t.Instance.name, t.Instance.backend)
        .add_columns(t.Instance.region, t.Instance.price)
        .join(t.Project, t.Project.id == t.Instance.project_id)
        .outerjoin(t.Fleet, t.Fleet.id == t.Instance.fleet_id)
        .where(
            t.Instance.deleted.is_(False),
            t.Instance.status != InstanceStatus.TERMINATED.value,
        )
    )
    for project, fleet, name, backend, region, price in (await s.execute(q)).all():
        family.add_metric([project, fleet or "", name, backend, region or ""], price or 0.0)
    return family


async def _job_points(s: AsyncSession) -> list[tuple[Any, ...]]:
    """(job row, its latest point) of every running job that has one."""
    latest = (
        select(t.JobMetricsPoint.job_id, func.max(t.JobMetricsPoint.timestamp_ms).label("ts"))
        .group_by(t.JobMetricsPoint.job_id)
        .subquery()
    )
    q = (
        select(t.Project.name, t.Job, t.JobMetricsPoint)
        .join(t.Project, t.Project.id == t.Job.project_id)
        .join(latest, latest.c.job_id == t.Job.id)
        .join(
            t.JobMetricsPoint,
            (t.JobMetricsPoint.job_id == t.Job.id)
            & (t.JobMetricsPoint.timestamp_ms == latest.c.ts),
        )
        .where(t.Job.status == JobStatus.RUNNING.value)
    )
    return list((await s.execute(q)).all())


def _job_families(rows: list[tuple[Any, ...]]) -> list[GaugeMetricFamily]:
    cpu = GaugeMetricFamily(
        "dstack_job_cpu_usage_ratio", "CPU time per second (1 = one core busy)", labels=JOB_LABELS
    )
    mem = GaugeMetricFamily("dstack_job_memory_usage_bytes", "Memory in use", labels=JOB_LABELS)
    ws = GaugeMetricFamily(
        "dstack_job_memory_working_set_bytes", "Memory in use less page cache", labels=JOB_LABELS
    )
    gpu_labels = [*JOB_LABELS, "gpu"]
    gpus = [GaugeMetricFamily(name, doc, labels=gpu_labels) for name, doc, _, _ in GPU_GAUGES]
    for project, job, point in rows:
        labels = [project, job.run_name, job.job_name, str(job.replica_num), str(job.job_num)]
        if point.cpu_usage_percent is not None:
            cpu.add_metric(labels, point.cpu_usage_percent / 100)
        if point.memory_usage_bytes is not None:
            mem.add_metric(labels, point.memory_usage_bytes)
        if point.memory_working_set_bytes is not None:
            ws.add_metric(labels, point.memory_working_set_bytes)
        for i, reading in enumerate(json.loads(point.gpus or "[]")):
            for family, (_, _, key, scale) in zip(gpus, GPU_GAUGES, strict=True):
                if reading.get(key) is not None:
                    family.add_metric([*labels, str(i)], reading[key] * scale)
    return [cpu, mem, ws, *gpus]


class _Snapshot(Collector):
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self.families


async def exposition(s: AsyncSession) -> bytes:
    """The whole `/metrics` answer in Prometheus' text format."""
    families = [
        _count_family("dstack_runs", "Runs by status", await _counts(s, t.Run)),
        _count_family("dstack_jobs", "Job submissions by status", await _counts(s, t.Job)),
        _count_family("dstack_fleets", "Fleets by status", await _counts(s, t.Fleet)),
        _count_family("dstack_instances", "Instances by status", await _counts(s, t.Instance)),
        await _prices(s),
        *_job_families(await _job_points(s)),
    ]
    registry = CollectorRegistry()
    registry.register(_Snapshot(families))
    return generate_latest(registry) + generate_latest(telemetry.registry())
