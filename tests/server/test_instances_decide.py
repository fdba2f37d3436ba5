"""The instance transition table of `reconcilers/instances.py`, one row per transition."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dstack.models.instances import InstanceTerminationReason as R
from dstack.server.reconcilers.instances import (
    Act,
    InstanceDecision,
    InstanceView,
    Outcome,
    after,
    decide,
)

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
        InstanceDecision("terminate"),
    ),
    (
        "terminating/a-host-that-failed-to-come-up-stays-listed",
        view(status="terminating", agent_ok=None, termination_reason="no_offers"),
        InstanceDecision("terminate", keep_row=True),
    ),
    (
        "provisioning/agent-answers",
        view(status="provisioning", agent_ok=True, provisioning_since=ago(5)),
        InstanceDecision("ready"),
    ),
    (
        "provisioning/agent-silent-within-timeout",
        view(
            status="provisioning",
            agent_ok=False,
            provisioning_since=ago(5),
            provisioning_timeout=30,
        ),
        InstanceDecision("advance", recheck=0.5),
    ),
    (
        "provisioning/agent-silent-just-before-timeout-looks-again-then",
        view(
            status="provisioning",
            agent_ok=False,
            provisioning_since=ago(29.5),
            provisioning_timeout=30,
        ),
        InstanceDecision("advance", recheck=0.5),
    ),
    (
        "provisioning/agent-silent-a-moment-before-timeout",
        view(
            status="provisioning",
            agent_ok=False,
            provisioning_since=ago(29.75),
            provisioning_timeout=30,
        ),
        InstanceDecision("advance", recheck=0.25),
    ),
    (
        "provisioning/agent-silent-past-timeout",
        view(
            status="provisioning",
            agent_ok=False,
            provisioning_since=ago(31),
            provisioning_timeout=30,
        ),
        InstanceDecision("diagnose"),
    ),
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


T0 = NOW


def d(action: Act, **kw) -> InstanceDecision:
    return InstanceDecision(action, **kw)


AFTER = [
    (
        "create/ok-provisioning",
        d(Act.CREATE),
        Outcome(True, values={"agent_url": "http://a"}),
        d(
            Act.CREATE,
            status="provisioning",
            values={"agent_url": "http://a", "started_at": T0, "dirty": True},
        ),
    ),
    (
        "create/failed-terminating-error",
        d(Act.CREATE),
        Outcome(False, "AMI not found"),
        d(Act.CREATE, status="terminating", reason="error", message="AMI not found"),
    ),
    (
        "create/no-capacity-terminating-no-offers",
        d(Act.CREATE),
        Outcome(False, "InsufficientInstanceCapacity", reason=R.NO_OFFERS),
        d(
            Act.CREATE,
            status="terminating",
            reason="no_offers",
            message="InsufficientInstanceCapacity",
        ),
    ),
    (
        "advance/nothing-yet-waits",
        d(Act.ADVANCE, recheck=2.0),
        Outcome(True),
        d(Act.ADVANCE, recheck=2.0),
    ),
    (
        "advance/booted-due-at-once",
        d(Act.ADVANCE, recheck=2.0),
        Outcome(True, values={"hostname": "10.0.0.5"}),
        d(Act.ADVANCE, values={"hostname": "10.0.0.5", "dirty": True}),
    ),
    (
        "advance/host-died-while-booting",
        d(Act.ADVANCE, recheck=2.0),
        Outcome(False, "EC2 reports the instance terminated", reason=R.UNREACHABLE),
        d(
            Act.ADVANCE,
            status="terminating",
            reason="unreachable",
            message="EC2 reports the instance terminated",
            recheck=2.0,
        ),
    ),
    (
        "ready/ok-idle",
        d(Act.READY),
        Outcome(True, values={"host_info": "{}"}),
        d(Act.READY, status="idle", values={"host_info": "{}", "started_at": T0}),
    ),
    (
        "ready/unusable-host-cleaned-up",
        d(Act.READY),
        Outcome(False, "blocks: 3 does not divide"),
        d(Act.READY, status="terminating", reason="error", message="blocks: 3 does not divide"),
    ),
    (
        "diagnose/provisioning-timeout",
        d(Act.DIAGNOSE),
        Outcome(False, "the agent did not answer"),
        d(
            Act.DIAGNOSE,
            status="terminating",
            reason="provisioning_timeout",
            message="the agent did not answer",
        ),
    ),
    (
        "terminate/ok",
        d(Act.TERMINATE),
        Outcome(True),
        d(Act.TERMINATE, status="terminated", values={"finished_at": T0, "deleted": True}),
    ),
    (
        "terminate/ok-with-note",
        d(Act.TERMINATE),
        Outcome(True, "the host could not be cleaned up"),
        d(
            Act.TERMINATE,
            status="terminated",
            message="the host could not be cleaned up",
            values={"finished_at": T0, "deleted": True},
        ),
    ),
    (
        "terminate/ok-failed-host-kept",
        d(Act.TERMINATE, keep_row=True),
        Outcome(True),
        d(Act.TERMINATE, keep_row=True, status="terminated", values={"finished_at": T0}),
    ),
    (
        "terminate/failed-retried",
        d(Act.TERMINATE),
        Outcome(False, "API error"),
        d(Act.TERMINATE, message="API error"),
    ),
    (
        "revive/ok",
        d(Act.REVIVE, values={"unreachable": True}),
        Outcome(True, values={"agent_url": "http://b", "agent_pid": 7}),
        d(Act.REVIVE, values={"agent_url": "http://b", "agent_pid": 7, "unreachable": False}),
    ),
    (
        "revive/cannot-stays-unreachable",
        d(Act.REVIVE, values={"unreachable": True}),
        Outcome(False),
        d(Act.REVIVE, values={"unreachable": True}),
    ),
    (
        "revive/host-gone-terminating",
        d(Act.REVIVE, values={"unreachable": True}),
        Outcome(False, "EC2 reports the spot instance terminated", reason=R.UNREACHABLE),
        d(
            Act.REVIVE,
            status="terminating",
            reason="unreachable",
            message="EC2 reports the spot instance terminated",
            values={"unreachable": True},
        ),
    ),
]


@pytest.mark.parametrize(
    ("decision", "outcome", "expected"), [r[1:] for r in AFTER], ids=[r[0] for r in AFTER]
)
def test_after(decision: InstanceDecision, outcome: Outcome, expected: InstanceDecision) -> None:
    assert after(decision, outcome, T0) == expected


def test_a_host_gone_keeps_what_the_backend_said_of_its_jobs() -> None:
    for act in (Act.ADVANCE, Act.REVIVE):
        out = after(
            d(act),
            Outcome(False, "TIMEOUT", values={"remote_connection": "{}"}, reason=R.UNREACHABLE),
            T0,
        )
        assert out.status == "terminating" and out.values["remote_connection"] == "{}"
