"""Facts about a job's host and run that the job worker reads: how to reach the host over SSH,
the replica's peers, instance numbering, blocks and idle/inactivity limits. Kept apart from
`job_worker.py` so that module stays the act/apply half of the jobs state machine."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from dstack.models.offers import InstanceOfferWithAvailability
from dstack.models.runs import RunSpec
from dstack.server.db import tables as t


def host_access(inst: t.Instance) -> dict[str, Any]:
    """How the user's `ssh <run>` reaches the job's host (the ProxyJump to the job's sshd): an
    SSH-fleet host as the fleet reaches it (address, port, user, its proxy_jump as `ssh_proxy`
    in the reference's shape); any other host at its hostname, as root on port 22."""
    rc = json.loads(inst.remote_connection or "{}") if inst.backend == "ssh" else {}
    if not rc.get("hostname"):
        return {"hostname": inst.hostname or "", "username": "root", "ssh_port": 22}
    proxy = rc.get("proxy") or None
    return {
        "hostname": rc["hostname"],
        "username": rc.get("user") or "root",
        "ssh_port": int(rc.get("port") or 22),
        "ssh_proxy": {
            "hostname": proxy["hostname"],
            "port": int(proxy.get("port") or 22),
            "username": proxy.get("user") or "root",
        }
        if proxy
        else None,
    }


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


async def local_instance_exists(s: Any, project_id: str) -> bool:
    """Whether the project already has the local backend's instance (starting or up)."""
    row = (
        await s.execute(
            select(t.Instance.id)
            .where(
                t.Instance.project_id == project_id,
                t.Instance.backend == "local",
                t.Instance.deleted.is_(False),
                t.Instance.status.not_in(("terminating", "terminated")),
            )
            .limit(1)
        )
    ).first()
    return row is not None


async def next_instance_num(s: Any, fleet_id: str) -> int:

    n = (
        await s.execute(
            select(func.max(t.Instance.instance_num)).where(t.Instance.fleet_id == fleet_id)
        )
    ).scalar()
    return 0 if n is None else n + 1


def total_blocks(conf: dict[str, Any]) -> int:
    blocks = conf.get("blocks", 1)
    return blocks if isinstance(blocks, int) and blocks > 0 else 1


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


def offer_of(inst: t.Instance) -> InstanceOfferWithAvailability:
    return InstanceOfferWithAvailability.model_validate_json(inst.offer or "{}")


def is_spot(inst: t.Instance | None) -> bool:
    if inst is None or not inst.offer:
        return False
    return offer_of(inst).instance.resources.spot
