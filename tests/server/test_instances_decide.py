"""The instance transition table of `reconcilers/instances.py`, one row per transition."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dstack.server.reconcilers.instances import InstanceDecision, InstanceView, decide

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
IDLE = 300


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def view(**kw) -> InstanceView:
    base = dict(
        status="idle",
        unreachable=False,
        agent_ok=True,
        active_jobs=0,
        idle_since=ago(10),
        idle_duration=IDLE,
        fleet_min_reached=False,
    )
    base.update(kw)
    return InstanceView(**base)


IDLE_TIMEOUT = InstanceDecision("wait", status="terminating", reason="idle_timeout")

TABLE = [
    (
        "pending/backend-creates-it",
        view(status="pending", agent_ok=None),
        InstanceDecision("create"),
    ),
    (
        "terminating/backend-terminates-it",
        view(status="terminating", agent_ok=None),
        InstanceDecision("terminate", status="terminated"),
    ),
    ("provisioning/waits", view(status="provisioning", agent_ok=None), InstanceDecision("wait")),
    ("terminated/left-alone", view(status="terminated", agent_ok=None), InstanceDecision("wait")),
    # agent answers
    ("idle/agent-answers", view(), InstanceDecision("wait")),
    (
        "idle/agent-answers-again",
        view(unreachable=True),
        InstanceDecision("wait", values={"unreachable": False}),
    ),
    ("idle/not-checked-this-pass", view(unreachable=True, agent_ok=None), InstanceDecision("wait")),
    # agent does not answer
    (
        "idle/agent-stops-answering",
        view(agent_ok=False),
        InstanceDecision("revive", values={"unreachable": True}),
    ),
    (
        "idle/agent-still-not-answering",
        view(agent_ok=False, unreachable=True),
        InstanceDecision("revive"),
    ),
    (
        "busy/agent-stops-answering",
        view(status="busy", agent_ok=False, active_jobs=2),
        InstanceDecision("revive", values={"unreachable": True}),
    ),
    # idle timeout
    ("idle/past-idle_duration", view(idle_since=ago(IDLE + 1)), IDLE_TIMEOUT),
    ("idle/at-idle_duration-not-yet", view(idle_since=ago(IDLE)), InstanceDecision("wait")),
    (
        "idle/past-idle_duration-with-active-jobs",
        view(idle_since=ago(IDLE + 1), active_jobs=1),
        InstanceDecision("wait"),
    ),
    (
        "busy/past-idle_duration-with-active-jobs",
        view(status="busy", idle_since=ago(10 * IDLE), active_jobs=3),
        InstanceDecision("wait"),
    ),
    (
        "busy/past-idle_duration-no-jobs-left",
        view(status="busy", idle_since=ago(IDLE + 1)),
        IDLE_TIMEOUT,
    ),
    (
        "idle/no-limit-None",
        view(idle_since=ago(365 * 86400), idle_duration=None),
        InstanceDecision("wait"),
    ),
    (
        "idle/no-limit-negative",
        view(idle_since=ago(365 * 86400), idle_duration=-1),
        InstanceDecision("wait"),
    ),
    ("idle/zero-limit", view(idle_since=ago(1), idle_duration=0), IDLE_TIMEOUT),
    (
        "idle/fleet-at-nodes-min",
        view(idle_since=ago(IDLE + 1), fleet_min_reached=True),
        InstanceDecision("wait"),
    ),
    (
        "idle/recovered-and-past-idle_duration",
        view(idle_since=ago(IDLE + 1), unreachable=True),
        InstanceDecision(
            "wait", status="terminating", reason="idle_timeout", values={"unreachable": False}
        ),
    ),
    (
        "idle/unreachable-past-idle_duration-is-revived-not-timed-out",
        view(idle_since=ago(IDLE + 1), agent_ok=False),
        InstanceDecision("revive", values={"unreachable": True}),
    ),
]


@pytest.mark.parametrize(("v", "expected"), [r[1:] for r in TABLE], ids=[r[0] for r in TABLE])
def test_decide(v: InstanceView, expected: InstanceDecision) -> None:
    assert decide(v, NOW) == expected
