"""Instances: hosts that run jobs, from creation to termination, whatever the backend.

| status       | observation                        | act       | next status                 |
|--------------|------------------------------------|-----------|-----------------------------|
| pending      | -                                  | create    | provisioning; failed:       |
|              |                                    |           | terminating (no_offers when |
|              |                                    |           | the offer had no capacity,  |
|              |                                    |           | else error)                 |
| provisioning | agent answers                      | ready     | idle; host unusable:        |
|              |                                    |           | terminating (error)         |
| provisioning | agent silent past backend timeout  | diagnose  | terminating                 |
|              |                                    |           | (provisioning_timeout)      |
| provisioning | agent silent, within the timeout   | advance   | provisioning (the backend's |
|              |                                    |           | next boot step, if any);    |
|              |                                    |           | host died: terminating      |
| idle         | agent answers                      | -         | reachable again             |
| idle         | agent does not answer              | revive    | unreachable (not scheduled) |
|              |                                    |           | the backend may restart it; |
|              |                                    |           | host gone: terminating      |
|              |                                    |           | (unreachable)               |
| idle         | no jobs, idle past idle_duration   | -         | terminating (idle_timeout)  |
| terminating  | -                                  | terminate | terminated (still listed    |
|              |                                    |           | when it failed to come up); |
|              |                                    |           | failed: retried             |

`decide()` picks the act from what was observed; `after()` turns the act's outcome into the
transition. Both are pure: the worker only observes, acts and writes what they return.

`busy` is not stored: an instance with active jobs is shown busy (its blocks are counted from
the jobs), so a job finishing never needs to write the instance row.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any

from dstack.models.instances import InstanceStatus as S
from dstack.models.instances import InstanceTerminationReason as R

# How often a provisioning host's agent is asked whether it answers yet.
POLL = 0.5


class Act(str, Enum):
    WAIT = "wait"
    CREATE = "create"
    READY = "ready"
    ADVANCE = "advance"
    DIAGNOSE = "diagnose"
    REVIVE = "revive"
    TERMINATE = "terminate"


@dataclass(frozen=True)
class InstanceView:
    status: str
    unreachable: bool
    agent_ok: bool | None  # None: not checked on this pass
    active_jobs: int
    idle_since: datetime
    idle_duration: int | None  # seconds; -1 or None with no limit
    fleet_min_reached: bool  # terminating would go below the fleet's nodes.min
    provisioning_since: datetime | None = None
    provisioning_timeout: float = 600.0
    provisioning_poll: float = POLL
    termination_reason: str | None = None  # stored with `terminating`


@dataclass
class InstanceDecision:
    action: Act
    status: S | None = None
    reason: R | None = None
    message: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    # Seconds until this instance should be looked at again (None: the status's interval).
    recheck: float | None = None
    # Terminated but still listed: a host that failed to come up stays visible with its error.
    keep_row: bool = False


@dataclass(frozen=True)
class Outcome:
    """What an act came to. `ok` False: `message` says why, for the user."""

    ok: bool
    message: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    # Why it failed, when the failure says more than "error" (no capacity, host gone).
    reason: R | None = None


def decide(v: InstanceView, now: datetime) -> InstanceDecision:
    status = S(v.status)
    if status == S.PENDING:
        return InstanceDecision(Act.CREATE)
    if status == S.PROVISIONING:
        return _provisioning(v, now)
    if status == S.TERMINATING:
        failed = v.termination_reason in (R.ERROR.value, R.NO_OFFERS.value)
        return InstanceDecision(Act.TERMINATE, keep_row=failed)
    if status not in (S.IDLE, S.BUSY):
        return InstanceDecision(Act.WAIT)
    if v.agent_ok is False:
        return InstanceDecision(Act.REVIVE, values={} if v.unreachable else {"unreachable": True})
    values: dict[str, Any] = {"unreachable": False} if v.unreachable and v.agent_ok else {}
    limit = v.idle_duration
    if (
        v.active_jobs == 0
        and limit is not None
        and limit >= 0
        and not v.fleet_min_reached
        and (now - v.idle_since).total_seconds() > limit
    ):
        return InstanceDecision(Act.WAIT, S.TERMINATING, R.IDLE_TIMEOUT, values=values)
    return InstanceDecision(Act.WAIT, values=values)


def _provisioning(v: InstanceView, now: datetime) -> InstanceDecision:
    if v.agent_ok:
        return InstanceDecision(Act.READY)
    since = v.provisioning_since or now
    left = v.provisioning_timeout - (now - since).total_seconds()
    if left <= 0:
        return InstanceDecision(Act.DIAGNOSE)
    return InstanceDecision(Act.ADVANCE, recheck=min(v.provisioning_poll, left))


def after(d: InstanceDecision, o: Outcome, now: datetime) -> InstanceDecision:
    """The transition an act's outcome leads to."""
    if d.action == Act.CREATE:
        if o.ok:
            # Due again at once: the agent usually answers right after its start.
            values = {**o.values, "started_at": now, "dirty": True}
            return replace(d, status=S.PROVISIONING, values=values)
        # Terminated through the backend: a failed create may have left something behind.
        return replace(d, status=S.TERMINATING, reason=o.reason or R.ERROR, message=o.message)
    if d.action == Act.READY:
        if o.ok:
            return replace(d, status=S.IDLE, values={**o.values, "started_at": now})
        return replace(d, status=S.TERMINATING, reason=R.ERROR, message=o.message)
    if d.action == Act.ADVANCE:
        if not o.ok:
            values = {**d.values, **o.values}
            reason = o.reason or R.ERROR
            return replace(d, status=S.TERMINATING, reason=reason, message=o.message, values=values)
        if o.values:  # a boot step happened: the agent may answer right away
            return replace(d, values={**o.values, "dirty": True}, recheck=None)
        return d
    if d.action == Act.DIAGNOSE:
        return replace(d, status=S.TERMINATING, reason=R.PROVISIONING_TIMEOUT, message=o.message)
    if d.action == Act.TERMINATE:
        if o.ok:
            values: dict[str, Any] = {"finished_at": now}
            if not d.keep_row:
                values["deleted"] = True
            return replace(d, status=S.TERMINATED, message=o.message, values=values)
        return replace(d, message=o.message)  # stays terminating: retried on the next pass
    if d.action == Act.REVIVE and o.ok:
        return replace(d, values={**d.values, **o.values, "unreachable": False})
    if d.action == Act.REVIVE and o.reason == R.UNREACHABLE:  # the host is gone for good
        values = {**d.values, **o.values}
        return replace(
            d, status=S.TERMINATING, reason=R.UNREACHABLE, message=o.message, values=values
        )
    return d
