"""Instances: hosts that run jobs, from creation to termination.

| status      | observation                              | next status / effect               |
|-------------|------------------------------------------|------------------------------------|
| pending     | -                                        | backend creates it: idle, or       |
|             |                                          | terminated (error) with the reason |
| idle        | agent answers                            | reachable again if it was not      |
| idle        | agent does not answer                    | unreachable (not scheduled);       |
|             |                                          | local: the agent is restarted      |
| idle        | no active jobs, idle past idle_duration  | terminating: idle_timeout          |
| terminating | -                                        | backend terminates it: terminated  |

`busy` is not stored: an instance with active jobs is shown busy (its blocks are counted from
the jobs), so a job finishing never needs to write the instance row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class InstanceView:
    status: str
    unreachable: bool
    agent_ok: bool | None  # None: not checked on this pass
    active_jobs: int
    idle_since: datetime
    idle_duration: int | None  # seconds; -1 or None with no limit
    fleet_min_reached: bool  # terminating would go below the fleet's nodes.min


@dataclass
class InstanceDecision:
    action: str  # wait create terminate revive
    status: str | None = None
    reason: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


def decide(v: InstanceView, now: datetime) -> InstanceDecision:
    if v.status == "pending":
        return InstanceDecision("create")
    if v.status == "terminating":
        return InstanceDecision("terminate", status="terminated")
    if v.status not in ("idle", "busy"):
        return InstanceDecision("wait")
    if v.agent_ok is False:
        return InstanceDecision("revive", values={} if v.unreachable else {"unreachable": True})
    values: dict[str, Any] = {"unreachable": False} if v.unreachable and v.agent_ok else {}
    limit = v.idle_duration
    if (
        v.active_jobs == 0
        and limit is not None
        and limit >= 0
        and not v.fleet_min_reached
        and (now - v.idle_since).total_seconds() > limit
    ):
        return InstanceDecision("wait", status="terminating", reason="idle_timeout", values=values)
    return InstanceDecision("wait", values=values)
