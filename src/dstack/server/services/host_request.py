"""What a backend that creates hosts is told beyond the instance row: the project's SSH key
(to reach the host) and what the fleet, the run and the job asked of it (disk, price limit,
reservation, placement, tags, zones, the least resources, the run time limit), gathered from
their rows when an instance is created."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from dstack.server.backends.base import Host
from dstack.server.db import tables as t
from dstack.server.services.context import ServerContext
from dstack.server.services.ssh_keys import project_keypair


@dataclass
class CreateContext:
    project_key_enc: str | None
    project_public_key: str | None
    request: dict[str, Any]

    def fill(self, host: Host) -> None:
        host.project_key_enc = self.project_key_enc
        host.project_public_key = self.project_public_key
        host.request = dict(self.request)


async def create_context(ctx: ServerContext, s: AsyncSession, inst: t.Instance) -> CreateContext:
    project = await s.get(t.Project, inst.project_id)
    public = None
    if project is not None:
        had = bool(project.ssh_private_key)
        _, public = await project_keypair(s, ctx.box, project)
        if not had:
            await s.commit()
    fleet = await s.get(t.Fleet, inst.fleet_id) if inst.fleet_id else None
    conf = json.loads(fleet.spec).get("configuration", {}) if fleet else {}
    job = await s.get(t.Job, inst.provisioning_job_id) if inst.provisioning_job_id else None
    run_conf = await _run_configuration(s, job)
    request = {
        **_job_request(job, conf),
        **_fleet_request(fleet, conf),
        **_placement_request(job, conf, run_conf),
    }
    return CreateContext(project.ssh_private_key if project else None, public, request)


def _job_request(job: t.Job | None, conf: dict[str, Any]) -> dict[str, Any]:
    """The job's own asks; the fleet's where the job says nothing."""
    spec = json.loads(job.job_spec) if job else {}
    wanted = spec.get("requirements", {})
    out: dict[str, Any] = {}
    if spec.get("max_duration"):
        # A scheduler that enforces run time itself (Slurm's --time) is told the limit.
        out["max_duration"] = int(spec["max_duration"])
    least = _least(wanted.get("resources"))
    if least:
        out["resources"] = least
    disk = _disk_min_gb(wanted.get("resources")) or _disk_min_gb(conf.get("resources"))
    if disk:
        out["disk_gb"] = disk
    for key in ("max_price", "reservation"):
        value = wanted.get(key) if wanted.get(key) is not None else conf.get(key)
        if value is not None:
            out[key] = value
    return out


def _fleet_request(fleet: t.Fleet | None, conf: dict[str, Any]) -> dict[str, Any]:
    """`fleet_nodes`: the size of a fixed-size fleet (`nodes: N`), for a backend that makes the
    whole fleet one allocation (Slurm's `sbatch --nodes=N`)."""
    if not conf.get("placement"):
        return {}
    out = {"placement": conf["placement"], "fleet": fleet.name if fleet else None}
    nodes = conf.get("nodes")
    if fleet is not None and isinstance(nodes, dict) and nodes.get("min") == nodes.get("max"):
        out.update(fleet_id=fleet.id, fleet_nodes=nodes.get("min"))
    return out


def _placement_request(
    job: t.Job | None, conf: dict[str, Any], run_conf: dict[str, Any]
) -> dict[str, Any]:
    """Tags (the run's over the fleet's) and zones: a network volume the job mounts is in one
    zone, so the instance must be created there; else the run's, else the fleet's zones."""
    out: dict[str, Any] = {}
    tags = {**(conf.get("tags") or {}), **(run_conf.get("tags") or {})}
    if tags:
        out["tags"] = tags
    zones = run_conf.get("availability_zones") or conf.get("availability_zones")
    volume_zones = [
        e["availability_zone"]
        for e in json.loads((job.volumes if job else None) or "[]")
        if e.get("availability_zone")
    ]
    if volume_zones:
        zones = volume_zones[:1]
    if zones:
        out["availability_zones"] = list(zones)
    return out


async def _run_configuration(s: AsyncSession, job: t.Job | None) -> dict[str, Any]:
    run = await s.get(t.Run, job.run_id) if job else None
    return json.loads(run.run_spec).get("configuration", {}) if run else {}


def _least(resources: dict[str, Any] | None) -> dict[str, int]:
    """The least the job accepts (its ranges' lower ends): a backend that can hand out part
    of a machine (a Slurm allocation) asks for this, not for the whole offer."""
    if not resources:
        return {}
    cpu = ((resources.get("cpu") or {}).get("count") or {}).get("min")
    memory = (resources.get("memory") or {}).get("min")
    gpus = ((resources.get("gpu") or {}).get("count") or {}).get("min")
    out = {}
    if cpu:
        out["cpus"] = int(cpu)
    if memory:
        out["memory_mib"] = int(float(memory) * 1024)
    if gpus is not None:
        out["gpus"] = int(gpus)
    return out


def _disk_min_gb(resources: dict[str, Any] | None) -> int | None:
    """The smallest disk the requirements accept, in GB (the configuration's unit)."""
    disk = (resources or {}).get("disk") or {}
    size = disk.get("size") if isinstance(disk, dict) else None
    low = size.get("min") if isinstance(size, dict) else None
    return int(float(low)) if low else None
