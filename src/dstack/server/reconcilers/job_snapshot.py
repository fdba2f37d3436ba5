"""What one job pass knows when it decides: the rows it leased and what was found for them.
Its own module so the loader (`job_snapshots`) and the checks that read snapshots
(`job_precedence`) both import it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

from dstack.models.runs import JobSpec
from dstack.server.db import tables as t
from dstack.server.scheduler.placement import Candidate
from dstack.server.scheduler.precedence import Rival
from dstack.server.services.job_volumes import Mounts


@dataclass
class Snapshot:
    job: t.Job
    run: t.Run
    project: t.Project
    instance: t.Instance | None
    spec: JobSpec
    placement: Candidate | None = None
    queued: bool = False
    no_capacity: str | None = None
    inactivity_duration: int | None = None
    utilization_violation: str | None = None
    mounts: Mounts = ()
    volume_error: str | None = None
    volumes_held: bool = False
    # A queued job ahead of this one could take the host it was placed on, and why it waits.
    outranked: tuple[Rival, str] | None = None
