"""When a service replica is ready: one predicate for the proxy, the prober and the scaler.

The proxy routes requests to ready replicas (`server/proxy/registry.py`), the prober records
whether a replica's probes passed (`server/proxy/probes.py`), and the run reconciler retires an
old replica in a rolling update only for a new one that is ready (`server/reconcilers/runs.py`).
They used to hold three ideas of "ready" (the scaler ignored the proxy's unhealthy mark and a
stop in flight, for one); a replica the scaler counted as serving could get no traffic. This
module lives in `models/` because both layers may import it (tests/test_layering.py) and it is
pure: plain facts in, a boolean out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dstack.models.runs import JobStatus


@dataclass(frozen=True)
class ReplicaFacts:
    """What the database knows about one job submission of a service replica."""

    job_num: int
    status: str  # a JobStatus value
    has_probes: bool  # the job spec has probes (an empty list disables probing)
    probes_passed: bool  # `jobs.ready`: written by the prober from probes_passed()
    unhealthy_at: datetime | None = None  # the proxy saw the replica reset or refuse a request
    stop_requested: bool = False  # the run asked the job to stop; it is on its way out


def may_serve(f: ReplicaFacts) -> bool:
    """A replica that could take requests once its probes pass: job 0 of the replica (the one
    that publishes the service port), running, and not asked to stop. The prober probes these
    and only these."""
    return f.job_num == 0 and f.status == JobStatus.RUNNING.value and not f.stop_requested


def probes_passed(streaks: Sequence[int], probes: Sequence[dict[str, Any]]) -> bool:
    """Every probe's success streak reached its `ready_after` (1 by default)."""
    return all(s >= int(p.get("ready_after", 1)) for s, p in zip(streaks, probes, strict=False))


def is_ready(f: ReplicaFacts, now: datetime, unhealthy_cooldown: float) -> bool:
    """Ready to serve: it may serve, its probes passed (or it has none), and the proxy has not
    seen it fail in the last `unhealthy_cooldown` seconds (a later probe success clears that
    mark, see probes.py)."""
    if not may_serve(f):
        return False
    if f.has_probes and not f.probes_passed:
        return False
    cutoff = now - timedelta(seconds=unhealthy_cooldown)
    return f.unhealthy_at is None or f.unhealthy_at <= cutoff
