"""The job transition table of `reconcilers/jobs.py`, one row per transition."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import pytest

from dstack.models.instances import InstanceType, Resources
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.models.runs import TriedOffer
from dstack.server.reconcilers.jobs import (
    Decision,
    JobView,
    StartKind,
    StartOutcome,
    after_detach,
    after_start,
    decide,
    final_status,
    settled_at_once,
)
from dstack.server.scheduler.placement import Candidate

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
GRACE = 120.0
TERM_GRACE = 10.0
STOP = 300

OFFER = InstanceOfferWithAvailability(
    backend="local",
    instance=InstanceType(name="local", resources=Resources(cpus=4, memory_mib=8192)),
    region="local",
    price=0.0,
)
POOL = Candidate(OFFER, "f1", "fleet", "i1", 1)
NEW = Candidate(OFFER, "f1", "fleet", None, 1)
RUNNING = {"status": "running"}


def view(**kw) -> JobView:
    base = dict(
        status="running",
        termination_reason=None,
        instance_id="i1",
        instance_status="idle",
        instance_message=None,
        agent_job=RUNNING,
        agent_reachable=True,
        running_at=NOW - timedelta(minutes=10),
        disconnected_at=None,
        stop_sent_at=None,
        max_duration=None,
        stop_duration=STOP,
        unreachable_grace=GRACE,
        terminate_grace=TERM_GRACE,
    )
    base.update(kw)
    return JobView(**base)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


NO_CAP = "No matching fleet found: the project has no fleets."
EXIT = "container_exited_with_error"

# (id, view overrides, expected decision)
TABLE = [
    # -- submitted -----------------------------------------------------------------------
    (
        "submitted/pool-instance-fits",
        dict(status="submitted", instance_id=None, instance_status=None, placement=POOL),
        Decision("assign", status="provisioning"),
    ),
    (
        "submitted/only-backend-offer-fits",
        dict(status="submitted", instance_id=None, instance_status=None, placement=NEW),
        Decision("create_instance", status="provisioning"),
    ),
    (
        "submitted/nothing-fits",
        dict(
            status="submitted",
            instance_id=None,
            instance_status=None,
            placement=None,
            no_capacity_message=NO_CAP,
        ),
        Decision(
            "wait",
            status="terminating",
            reason="failed_to_start_due_to_no_capacity",
            message=NO_CAP,
        ),
    ),
    (
        "submitted/instance-already-assigned",
        dict(status="submitted", instance_id="i1", instance_status="pending", placement=None),
        Decision("wait", status="provisioning"),
    ),
    # -- provisioning --------------------------------------------------------------------
    (
        "provisioning/instance-pending",
        dict(status="provisioning", instance_status="pending", agent_job=None),
        Decision("wait"),
    ),
    (
        "provisioning/instance-provisioning",
        dict(status="provisioning", instance_status="provisioning", agent_job=None),
        Decision("wait"),
    ),
    (
        "provisioning/instance-idle-but-agent-unreachable",
        dict(status="provisioning", instance_status="idle", agent_reachable=False, agent_job=None),
        Decision("wait"),
    ),
    (
        "provisioning/instance-terminated",
        dict(
            status="provisioning",
            instance_status="terminated",
            instance_message="backend error: quota",
            agent_job=None,
        ),
        Decision(
            "wait",
            status="terminating",
            reason="waiting_instance_limit_exceeded",
            message="backend error: quota",
        ),
    ),
    (
        "provisioning/instance-terminating-no-message",
        dict(status="provisioning", instance_status="terminating", agent_job=None),
        Decision(
            "wait",
            status="terminating",
            reason="waiting_instance_limit_exceeded",
            message="the instance was terminated before the job started",
        ),
    ),
    (
        "provisioning/instance-row-gone",
        dict(status="provisioning", instance_id=None, instance_status=None, agent_job=None),
        Decision(
            "wait",
            status="terminating",
            reason="waiting_instance_limit_exceeded",
            message="the instance was terminated before the job started",
        ),
    ),
    (
        "provisioning/instance-ready-idle",
        dict(status="provisioning", instance_status="idle", agent_job=None),
        Decision("start", status="running"),
    ),
    (
        "provisioning/instance-ready-busy",
        dict(status="provisioning", instance_status="busy", agent_job=None),
        Decision("start", status="running"),
    ),
    # -- running -------------------------------------------------------------------------
    ("running/still-running", dict(), Decision("copy_logs")),
    (
        "running/reconnected-clears-disconnected_at",
        dict(disconnected_at=ago(30)),
        Decision("copy_logs", values={"disconnected_at": None}),
    ),
    (
        "running/agent-finished-done",
        dict(agent_job={"status": "done", "exit_status": 0}),
        Decision(
            "copy_logs", status="terminating", reason="done_by_runner", exit_status=0, values={}
        ),
    ),
    (
        "running/agent-finished-with-its-reason",
        dict(
            agent_job={
                "status": "failed",
                "termination_reason": "container_exited_with_error",
                "termination_message": "exit status 3",
                "exit_status": 3,
            }
        ),
        Decision(
            "copy_logs",
            status="terminating",
            reason="container_exited_with_error",
            message="exit status 3",
            exit_status=3,
        ),
    ),
    (
        "running/agent-failed-without-reason",
        dict(agent_job={"status": "failed"}),
        Decision("copy_logs", status="terminating", reason="executor_error"),
    ),
    (
        "running/agent-finished-after-reconnect",
        dict(agent_job={"status": "done", "exit_status": 0}, disconnected_at=ago(5)),
        Decision(
            "copy_logs",
            status="terminating",
            reason="done_by_runner",
            exit_status=0,
            values={"disconnected_at": None},
        ),
    ),
    (
        "running/agent-has-no-record",
        dict(agent_job=None),
        Decision(
            "wait",
            status="terminating",
            reason="executor_error",
            message="the agent has no record of the job",
        ),
    ),
    (
        "running/unreachable-first-seen",
        dict(agent_reachable=False, agent_job=None),
        Decision("wait", values={"disconnected_at": NOW}),
    ),
    (
        "running/unreachable-within-grace",
        dict(agent_reachable=False, agent_job=None, disconnected_at=ago(GRACE - 1)),
        Decision("wait"),
    ),
    (
        "running/unreachable-grace-passed",
        dict(agent_reachable=False, agent_job=None, disconnected_at=ago(GRACE)),
        Decision(
            "wait",
            status="terminating",
            reason="instance_unreachable",
            message="the instance stopped answering",
        ),
    ),
    (
        "running/max_duration-backstop-reached",
        dict(max_duration=3600, running_at=ago(3600 + 120)),
        Decision(
            "copy_logs",
            status="terminating",
            reason="max_duration_exceeded",
            message="the job ran longer than max_duration (3600s)",
        ),
    ),
    (
        "running/max_duration-passed-but-backstop-not-yet",
        dict(max_duration=3600, running_at=ago(3600 + 119)),
        Decision("copy_logs"),
    ),
    (
        "running/max_duration-without-running_at-left-to-the-agent",
        dict(max_duration=60, running_at=None),
        Decision("copy_logs"),
    ),
    (
        "running/no-max_duration",
        dict(max_duration=None, running_at=ago(10 * 86400)),
        Decision("copy_logs"),
    ),
    # -- terminating ---------------------------------------------------------------------
    (
        "terminating/agent-running-send-stop",
        dict(status="terminating", termination_reason="terminated_by_user"),
        Decision("stop", values={"stop_sent_at": NOW}),
    ),
    (
        "terminating/aborted_by_user-sends-abort",
        dict(status="terminating", termination_reason="aborted_by_user"),
        Decision("abort", values={"stop_sent_at": NOW}),
    ),
    (
        "terminating/stop-sent-within-stop_duration",
        dict(
            status="terminating",
            termination_reason="terminated_by_user",
            stop_sent_at=ago(STOP + TERM_GRACE - 1),
        ),
        Decision("copy_logs"),
    ),
    (
        "terminating/stop_duration-passed-escalates-to-abort",
        dict(
            status="terminating",
            termination_reason="terminated_by_user",
            stop_sent_at=ago(STOP + TERM_GRACE),
        ),
        Decision("abort", values={"stop_sent_at": NOW}),
    ),
    (
        "terminating/agent-job-finished",
        dict(
            status="terminating",
            termination_reason="terminated_by_user",
            agent_job={"status": "terminated"},
            stop_sent_at=ago(3),
        ),
        Decision("finalize", status="terminated"),
    ),
    (
        "terminating/agent-job-unknown",
        dict(status="terminating", termination_reason="executor_error", agent_job=None),
        Decision("finalize", status="failed"),
    ),
    (
        "terminating/host-gone-instance-terminated",
        dict(
            status="terminating",
            termination_reason="done_by_runner",
            instance_status="terminated",
            agent_reachable=False,
            agent_job=None,
        ),
        Decision("finalize", status="done"),
    ),
    (
        "terminating/never-placed",
        dict(
            status="terminating",
            termination_reason="failed_to_start_due_to_no_capacity",
            instance_id=None,
            instance_status=None,
            agent_reachable=False,
            agent_job=None,
        ),
        Decision("finalize", status="failed"),
    ),
    (
        "terminating/unreachable-first-seen",
        dict(
            status="terminating",
            termination_reason="terminated_by_user",
            agent_reachable=False,
            agent_job=None,
        ),
        Decision("wait", values={"disconnected_at": NOW}),
    ),
    (
        "terminating/unreachable-within-limit",
        dict(
            status="terminating",
            termination_reason="terminated_by_user",
            agent_reachable=False,
            agent_job=None,
            stop_sent_at=ago(STOP + TERM_GRACE + GRACE - 1),
        ),
        Decision("wait"),
    ),
    (
        "terminating/unreachable-past-stop_duration-and-grace",
        dict(
            status="terminating",
            termination_reason="aborted_by_user",
            agent_reachable=False,
            agent_job=None,
            disconnected_at=ago(STOP + TERM_GRACE + GRACE),
        ),
        Decision("finalize", status="aborted"),
    ),
    (
        "terminating/missing-reason-is-failed",
        dict(status="terminating", termination_reason=None, agent_job={"status": "done"}),
        Decision("finalize", status="failed"),
    ),
    # -- running dev environments: inactivity_duration ----------------------------------
    (
        "running/inactivity-exceeded",
        dict(
            inactivity_duration=60,
            inactivity_secs=59,
            agent_job={"status": "running", "no_connections_secs": 60},
        ),
        Decision(
            "copy_logs",
            status="terminating",
            reason="inactivity_duration_exceeded",
            message="no SSH connection for 60s (inactivity_duration is 60s)",
            values={"inactivity_secs": 60},
        ),
    ),
    (
        "running/inactive-but-below-limit",
        dict(
            inactivity_duration=60,
            inactivity_secs=59,
            agent_job={"status": "running", "no_connections_secs": 59},
        ),
        Decision("copy_logs"),
    ),
    (
        "running/connected-resets-inactivity",
        dict(
            inactivity_duration=60,
            inactivity_secs=59,
            agent_job={"status": "running", "no_connections_secs": 0},
        ),
        Decision("copy_logs", values={"inactivity_secs": 0}),
    ),
    (
        "running/inactivity-off-only-records",
        dict(inactivity_duration=None, agent_job={"status": "running", "no_connections_secs": 9}),
        Decision("copy_logs", values={"inactivity_secs": 9}),
    ),
    (
        "running/no-ssh-server-no-inactivity",
        dict(inactivity_duration=1, agent_job={"status": "running", "no_connections_secs": None}),
        Decision("copy_logs"),
    ),
    # -- utilization_policy (the verdict itself: test_utilization.py) ---------------------
    (
        "running/utilization-policy-violated",
        dict(utilization_violation="GPU 0 utilization stayed below 10% for 300s (at most 2%)"),
        Decision(
            "copy_logs",
            status="terminating",
            reason="terminated_due_to_utilization_policy",
            message="GPU 0 utilization stayed below 10% for 300s (at most 2%)",
        ),
    ),
    (
        "running/utilization-violated-but-agent-finished-first",
        dict(utilization_violation="idle", agent_job={"status": "done", "exit_status": 0}),
        Decision(
            "copy_logs", status="terminating", reason="done_by_runner", exit_status=0
        ),
    ),
    # -- stop requests from the run (jobs.stop_requested): only decide() moves the status ---
    (
        "submitted/stop-requested",
        dict(
            status="submitted",
            instance_id=None,
            instance_status=None,
            placement=POOL,
            stop_requested=True,
            stop_reason="terminated_by_user",
        ),
        Decision("wait", status="terminating", reason="terminated_by_user"),
    ),
    (
        "provisioning/stop-requested-scaled-down",
        dict(
            status="provisioning",
            instance_status="provisioning",
            stop_requested=True,
            stop_reason="scaled_down",
        ),
        Decision("wait", status="terminating", reason="scaled_down"),
    ),
    (
        "pulling/abort-requested",
        dict(
            status="pulling",
            stop_requested=True,
            stop_abort=True,
            stop_reason="aborted_by_user",
        ),
        Decision("wait", status="terminating", reason="aborted_by_user"),
    ),
    (
        "running/stop-requested",
        dict(stop_requested=True, stop_reason="done_by_runner"),
        Decision("wait", status="terminating", reason="done_by_runner"),
    ),
    (
        "running/stop-requested-while-unreachable",
        dict(
            agent_reachable=False,
            agent_job=None,
            stop_requested=True,
            stop_reason="terminated_by_user",
        ),
        Decision("wait", status="terminating", reason="terminated_by_user"),
    ),
    (
        "running/stop-requested-without-reason",
        dict(stop_requested=True),
        Decision("wait", status="terminating", reason="terminated_by_server"),
    ),
    (
        "running/stop-requested-but-it-already-ended-on-its-own",
        dict(
            agent_job={"status": "failed", "termination_reason": EXIT, "exit_status": 3},
            stop_requested=True,
            stop_reason="scaled_down",
        ),
        Decision("copy_logs", status="terminating", reason=EXIT, exit_status=3),
    ),
    (
        "terminating/stop-requested-again-changes-nothing",
        dict(
            status="terminating",
            termination_reason="terminated_by_user",
            stop_requested=True,
            stop_reason="terminated_by_user",
        ),
        Decision("stop", values={"stop_sent_at": NOW}),
    ),
    (
        "terminating/abort-requested-escalates-a-user-stop",
        dict(
            status="terminating",
            termination_reason="terminated_by_user",
            stop_sent_at=ago(5),
            stop_requested=True,
            stop_abort=True,
            stop_reason="aborted_by_user",
        ),
        Decision(
            "abort",
            values={"stop_sent_at": ago(5), "termination_reason": "aborted_by_user"},
        ),
    ),
    (
        "terminating/abort-requested-job-already-gone-is-aborted",
        dict(
            status="terminating",
            termination_reason="terminated_by_user",
            agent_job={"status": "terminated"},
            stop_requested=True,
            stop_abort=True,
            stop_reason="aborted_by_user",
        ),
        Decision(
            "finalize", status="aborted", values={"termination_reason": "aborted_by_user"}
        ),
    ),
    (
        "terminating/abort-requested-keeps-a-failure-reason",
        dict(
            status="terminating",
            termination_reason=EXIT,
            stop_sent_at=ago(5),
            stop_requested=True,
            stop_abort=True,
            stop_reason="aborted_by_user",
        ),
        Decision("abort", values={"stop_sent_at": ago(5)}),
    ),
    (
        "terminated/stop-request-left-alone",
        dict(status="terminated", stop_requested=True, stop_reason="terminated_by_user"),
        Decision("wait"),
    ),
    # -- volumes -------------------------------------------------------------------------
    (
        "submitted/volume-gone-or-failed",
        dict(
            status="submitted",
            instance_id=None,
            instance_status=None,
            placement=POOL,
            volume_error="volume data failed: quota",
        ),
        Decision(
            "wait",
            status="terminating",
            reason="volume_error",
            message="volume data failed: quota",
        ),
    ),
    (
        "submitted/queued-for-a-volume-in-use",
        dict(status="submitted", instance_id=None, instance_status=None, queued=True),
        Decision("wait"),
    ),
    (
        "terminating/agent-job-finished-volume-held-detaches",
        dict(
            status="terminating",
            termination_reason="done_by_runner",
            agent_job={"status": "done"},
            volumes_held=True,
        ),
        Decision("detach", status="done"),
    ),
    (
        "terminating/abort-volume-held-detaches-forced",
        dict(
            status="terminating",
            termination_reason="aborted_by_user",
            agent_job=None,
            volumes_held=True,
        ),
        Decision("detach_abort", status="aborted"),
    ),
    (
        "terminating/host-gone-volume-held-detaches",
        dict(
            status="terminating",
            termination_reason="instance_unreachable",
            instance_status="terminated",
            agent_reachable=False,
            agent_job=None,
            volumes_held=True,
        ),
        Decision("detach", status="failed"),
    ),
    (
        # The agent still runs the job: never detach under it; stop it first.
        "terminating/agent-running-volume-held-stops-first",
        dict(status="terminating", termination_reason="terminated_by_user", volumes_held=True),
        Decision("stop", values={"stop_sent_at": NOW}),
    ),
    # -- final statuses are left alone ---------------------------------------------------
    ("done/left-alone", dict(status="done"), Decision("wait")),
    ("failed/left-alone", dict(status="failed"), Decision("wait")),
]


@pytest.mark.parametrize(
    ("overrides", "expected"), [r[1:] for r in TABLE], ids=[r[0] for r in TABLE]
)
def test_decide(overrides: dict, expected: Decision) -> None:
    assert decide(view(**overrides), NOW) == expected


def test_every_docstring_row_is_covered() -> None:
    """Each status of the docstring table has at least one row here."""
    covered = {dict(r[1]).get("status", "running") for r in TABLE}
    assert {"submitted", "provisioning", "running", "terminating"} <= covered


def test_decide_is_pure() -> None:
    v = view(agent_reachable=False, agent_job=None)
    before = dataclasses.asdict(v)
    first = decide(v, NOW)
    assert decide(v, NOW) == first
    assert dataclasses.asdict(v) == before


def test_unreachable_grace_is_a_setting() -> None:
    v = view(agent_reachable=False, agent_job=None, disconnected_at=ago(30), unreachable_grace=30)
    assert decide(v, NOW).reason == "instance_unreachable"


def test_escalated_abort_restarts_the_clock() -> None:
    """After escalating, the next abort waits another stop_duration + grace."""
    v = view(status="terminating", termination_reason="terminated_by_user", stop_sent_at=NOW)
    assert decide(v, NOW + timedelta(seconds=1)) == Decision("copy_logs")


# The complete JobTerminationReason enum with its final status (server.md §3.2).
FINAL_STATUS = {
    "failed_to_start_due_to_no_capacity": "failed",
    "interrupted_by_no_capacity": "failed",
    "instance_unreachable": "failed",
    "instance_access_revoked": "failed",
    "waiting_instance_limit_exceeded": "failed",
    "waiting_runner_limit_exceeded": "failed",
    "terminated_by_user": "terminated",
    "volume_error": "failed",
    "gateway_error": "failed",
    "scaled_down": "terminated",
    "done_by_runner": "done",
    "aborted_by_user": "aborted",
    "terminated_by_server": "terminated",
    "inactivity_duration_exceeded": "terminated",
    "terminated_due_to_utilization_policy": "terminated",
    "container_exited_with_error": "failed",
    "ports_binding_failed": "failed",
    "creating_container_error": "failed",
    "executor_error": "failed",
    "max_duration_exceeded": "terminated",
    "log_quota_exceeded": "failed",
}


def test_reference_enum_has_21_values() -> None:
    assert len(FINAL_STATUS) == 21


@pytest.mark.parametrize(("reason", "status"), sorted(FINAL_STATUS.items()))
def test_final_status(reason: str, status: str) -> None:
    assert final_status(reason) == status


def test_final_status_missing_reason_is_failed() -> None:
    assert final_status(None) == "failed"
    assert final_status("some_future_reason") == "failed"


def test_submitted_fitting_only_busy_instances_waits_in_the_queue() -> None:
    """Docstring row `submitted | fits only instances busy right now | (wait in the queue)`."""
    if "queued" not in JobView.__dataclass_fields__:
        pytest.skip("JobView has no `queued` field in this tree")
    v = view(
        status="submitted",
        instance_id=None,
        instance_status=None,
        placement=None,
        queued=True,
        no_capacity_message=NO_CAP,
    )
    assert decide(v, NOW) == Decision("wait")


# -- the outcome of the start act: after_start() -----------------------------------------------

PORT_TAKEN = "port 8000 is already in use on host local"
STARTED_STATE = {"id": "j", "status": "running", "termination_reason": None}
DONE_STATE = {"id": "j", "status": "done", "termination_reason": "done_by_runner"}
PORTS_STATE = {
    "id": "j",
    "status": "failed",
    "termination_reason": "ports_binding_failed",
    "termination_message": PORT_TAKEN,
}

# (id, outcome, expected decision): one row per row of the docstring's start-outcome table.
START_TABLE = [
    ("agent-not-ready", StartOutcome(StartKind.AGENT_NOT_READY), Decision("wait")),
    ("peers-not-ready", StartOutcome(StartKind.PEERS_NOT_READY), Decision("wait")),
    ("agent-unreachable", StartOutcome(StartKind.AGENT_UNREACHABLE), Decision("wait")),
    (
        "runtime-error",
        StartOutcome(StartKind.RUNTIME_ERROR, "no Docker engine"),
        Decision(
            "start", status="terminating", reason="executor_error", message="no Docker engine"
        ),
    ),
    (
        "agent-refused",
        StartOutcome(StartKind.AGENT_REFUSED, "id: job 'j' exists with a different env"),
        Decision(
            "start",
            status="terminating",
            reason="executor_error",
            message="id: job 'j' exists with a different env",
        ),
    ),
    (
        "ports-binding-failed",
        StartOutcome.answered(PORTS_STATE),
        Decision(
            "start", status="terminating", reason="ports_binding_failed", message=PORT_TAKEN
        ),
    ),
    ("started", StartOutcome.answered(STARTED_STATE), Decision("start", status="running")),
    (
        "volume-attached-elsewhere-waits",
        StartOutcome(StartKind.VOLUME_WAIT, "volume data is still attached to another instance"),
        Decision("wait"),
    ),
    (
        "volume-attach-failed",
        StartOutcome(StartKind.VOLUME_ERROR, "volume data could not be attached: busy"),
        Decision(
            "start",
            status="terminating",
            reason="volume_error",
            message="volume data could not be attached: busy",
        ),
    ),
    (
        # A start repeated after a crash may find the job already finished: it ran, so it is
        # `running` now and the next observation ends it with the agent's reason.
        "started/already-finished",
        StartOutcome.answered(DONE_STATE),
        Decision("start", status="running"),
    ),
]


@pytest.mark.parametrize(
    ("outcome", "expected"), [r[1:] for r in START_TABLE], ids=[r[0] for r in START_TABLE]
)
def test_after_start(outcome: StartOutcome, expected: Decision) -> None:
    decision = after_start(outcome)
    assert decision == expected
    # Plain strings reach the database and the event messages, never enum members.
    for value in (decision.status, decision.reason):
        assert value is None or type(value) is str


def test_every_start_kind_has_a_row() -> None:
    assert {r[1].kind for r in START_TABLE} == set(StartKind)


def test_after_detach_finishes_only_once_released() -> None:
    detach = Decision("detach", status="done")
    assert after_detach(detach, True) == Decision("finalize", status="done")
    assert after_detach(detach, False) == Decision("wait")


def test_answered_classifies_the_agents_state() -> None:
    assert StartOutcome.answered(PORTS_STATE).kind is StartKind.PORTS_BINDING_FAILED
    assert StartOutcome.answered(PORTS_STATE).message == PORT_TAKEN
    assert StartOutcome.answered(STARTED_STATE) == StartOutcome(
        StartKind.STARTED, state=STARTED_STATE
    )


# -- offers tried one after another, interruptions --------------------------------------------

TRIED_A = TriedOffer(backend="fake", region="r1", instance_type="a", price=1.0, message="full")


def _failed_instance(**kw) -> JobView:
    base = dict(
        status="provisioning",
        instance_status="terminated",
        instance_reason="no_offers",
        instance_message="no capacity in r1",
        new_instance_offer=TriedOffer(backend="fake", region="r1", instance_type="b", spot=True),
        agent_job=None,
    )
    base.update(kw)
    return view(**base)


def test_a_new_instance_without_capacity_sends_the_job_back_to_try_the_next_offer() -> None:
    d = decide(_failed_instance(tried_offers=(TRIED_A,)), NOW)
    assert d.status == "submitted" and d.reason is None
    assert d.values["instance_id"] is None and d.values["job_provisioning_data"] is None
    tried = [TriedOffer.model_validate(o) for o in json.loads(d.values["tried_offers"])]
    assert [o.instance_type for o in tried] == ["a", "b"]
    assert tried[1].message == "no capacity in r1"
    assert d.event == "offer fake r1 b (spot, $0/h) failed: no capacity in r1; trying the next one"


def test_a_create_error_is_tried_like_no_capacity_but_a_lost_pool_instance_is_not() -> None:
    assert decide(_failed_instance(instance_reason="error"), NOW).status == "submitted"
    lost = decide(_failed_instance(new_instance_offer=None), NOW)
    assert lost.status == "terminating" and lost.reason == "waiting_instance_limit_exceeded"
    timeout = decide(_failed_instance(instance_reason="provisioning_timeout"), NOW)
    assert timeout.reason == "waiting_instance_limit_exceeded"


def test_the_offer_cap_fails_the_job_listing_what_was_tried() -> None:
    many = tuple(TRIED_A.model_copy(update={"instance_type": f"t{i}"}) for i in range(24))
    d = decide(_failed_instance(tried_offers=many), NOW)
    assert d.status == "terminating" and d.reason == "failed_to_start_due_to_no_capacity"
    assert d.message.startswith("Stopped after 25 offers: fake r1 t0 (on-demand, $1/h): full")
    assert d.message.endswith("; and 20 more")
    assert len(json.loads(d.values["tried_offers"])) == 25


def test_nothing_left_after_tried_offers_fails_with_the_list() -> None:
    v = view(status="submitted", instance_id=None, instance_status=None, agent_job=None,
             tried_offers=(TRIED_A,), no_capacity_message="whatever")  # fmt: skip
    d = decide(v, NOW)
    assert d.reason == "failed_to_start_due_to_no_capacity"
    assert d.message == "No offer left to try: fake r1 a (on-demand, $1/h): full"


@pytest.mark.parametrize(
    "spot,instance_reason,reason",
    [
        (True, "terminated_by_user", "interrupted_by_no_capacity"),
        # The backend lost the machine (a Slurm NODE_FAIL, a preemption): an interruption.
        (False, "unreachable", "interrupted_by_no_capacity"),
        (False, "terminated_by_user", "instance_unreachable"),
    ],
)
@pytest.mark.parametrize("inst_status", ["terminating", "terminated"])
def test_a_running_job_whose_instance_ends_under_it_ends_at_once(
    spot: bool, instance_reason: str, reason: str, inst_status: str
) -> None:
    v = view(instance_status=inst_status, spot=spot, instance_reason=instance_reason,
             agent_reachable=False, disconnected_at=None)  # fmt: skip
    d = decide(v, NOW)
    assert d.status == "terminating" and d.reason == reason
    assert f"terminated under the job ({instance_reason})" in d.message


def test_a_stop_of_the_job_wins_over_its_instance_ending() -> None:
    v = view(instance_status="terminating", stop_requested=True, stop_reason="terminated_by_user")
    assert decide(v, NOW).reason == "terminated_by_user"


def test_a_lost_host_whose_backend_names_how_its_jobs_end() -> None:
    """A Slurm job that hit its time limit ends the dstack job `max_duration_exceeded`, one
    cancelled outside dstack fails it: not interruptions, so `retry` does not resubmit."""
    v = view(instance_status="terminating", instance_reason="unreachable",
             instance_lost_as="max_duration_exceeded", instance_message="TIMEOUT",
             agent_reachable=False, disconnected_at=None)  # fmt: skip
    d = decide(v, NOW)
    assert (d.status, d.reason, d.message) == ("terminating", "max_duration_exceeded", "TIMEOUT")


def test_a_job_that_holds_nothing_is_settled_in_the_same_pass() -> None:
    """No capacity for a job with no instance: terminating, then at once the final step of
    the same table (nothing to stop or detach); the worker writes both, one event each."""
    v = view(status="submitted", instance_id=None, instance_status=None, agent_job=None,
             no_capacity_message="no offers")  # fmt: skip
    d = decide(v, NOW)
    assert d.status == "terminating"
    then = settled_at_once(v, d, NOW)
    assert then is not None and then.action == "finalize" and then.status == "failed"
    stopped = view(status="submitted", instance_id=None, instance_status=None, agent_job=None,
                   stop_requested=True, stop_reason="terminated_by_user")  # fmt: skip
    then = settled_at_once(stopped, decide(stopped, NOW), NOW)
    assert then is not None and then.status == "terminated"


def test_a_job_its_agent_reports_ended_is_settled_in_the_same_pass() -> None:
    """Running, and the agent says the job exited: terminating, then at once the final step
    (nothing left to stop); the worker drains the logs and removes the job in that pass."""
    exited = {"status": "failed", "termination_reason": EXIT, "exit_status": 3}
    for agent_job, final in ((DONE_STATE, "done"), (exited, "failed")):
        v = view(agent_job=agent_job)
        d = decide(v, NOW)
        assert (d.action, d.status) == ("copy_logs", "terminating")
        then = settled_at_once(v, d, NOW)
        assert then is not None and (then.action, then.status) == ("finalize", final)
    # A stop request that arrives as the job exits: the job's own end still wins, at once.
    asked = view(agent_job=DONE_STATE, stop_requested=True, stop_reason="terminated_by_user")
    then = settled_at_once(asked, decide(asked, NOW), NOW)
    assert then is not None and then.status == "done"
    # Still holding a volume: detached first, in later passes.
    held = view(agent_job=DONE_STATE, volumes_held=True)
    assert settled_at_once(held, decide(held, NOW), NOW) is None


def test_a_job_with_an_instance_is_not_settled_at_once() -> None:
    """A job on an instance has something to stop: its terminating step is another pass."""
    v = view(status="provisioning", instance_status="terminated", instance_message="gone")
    d = decide(v, NOW)
    assert d.status == "terminating"
    assert settled_at_once(v, d, NOW) is None
    running = view(stop_requested=True, stop_reason="terminated_by_user")
    assert settled_at_once(running, decide(running, NOW), NOW) is None

