"""The volume reconciler's table (`reconcilers/volumes.py`), row by row: pure, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dstack.server.backends.base import VolumeProvisioning
from dstack.server.reconcilers.volumes import (
    CLEANUP,
    CREATE,
    DELETE_CLOUD,
    DELETE_DIR,
    FORGET,
    REGISTER,
    WAIT,
    Outcome,
    VolumeDecision,
    VolumeView,
    after,
    decide,
)

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
LATER = NOW + timedelta(seconds=30)


@pytest.mark.parametrize(
    ("view", "action"),
    [
        (VolumeView(status="submitted"), CREATE),
        (VolumeView(status="submitted", external=True), REGISTER),
        (VolumeView(status="submitted", next_attempt_at=LATER), WAIT),
        (VolumeView(status="submitted", next_attempt_at=NOW - timedelta(seconds=1)), CREATE),
        (VolumeView(status="active", to_be_deleted=True, created=True), DELETE_CLOUD),
        (VolumeView(status="active", to_be_deleted=True, created=True, held_by=("x",)), WAIT),
        (
            VolumeView(status="active", to_be_deleted=True, created=True, next_attempt_at=LATER),
            WAIT,
        ),  # fmt: skip
        (VolumeView(status="active", to_be_deleted=True, created=True, external=True), FORGET),
        (VolumeView(status="failed", to_be_deleted=True), FORGET),
        (VolumeView(status="submitted", to_be_deleted=True), FORGET),
        (VolumeView(status="active", to_be_deleted=True, directory=True, bound=True), DELETE_DIR),
        (
            VolumeView(status="active", to_be_deleted=True, directory=True, bound=True, force=True),
            FORGET,
        ),  # fmt: skip
        (VolumeView(status="active", to_be_deleted=True, directory=True), FORGET),
        (VolumeView(status="active"), WAIT),
        (VolumeView(status="failed"), WAIT),
        (
            VolumeView(status="active", auto_cleanup=60, idle_since=NOW - timedelta(seconds=61)),
            CLEANUP,
        ),  # fmt: skip
        (
            VolumeView(
                status="active",
                auto_cleanup=60,
                idle_since=NOW - timedelta(seconds=61),
                held_by=("attached on instance h",),
            ),
            WAIT,
        ),  # fmt: skip
        (VolumeView(status="active", auto_cleanup=-1, idle_since=NOW - timedelta(days=9)), WAIT),
    ],
)
def test_decide_table(view: VolumeView, action: str) -> None:
    assert decide(view, NOW).action == action


def test_waiting_says_who_holds_it_and_rechecks_a_backoff_at_its_end() -> None:
    d = decide(VolumeView(status="active", to_be_deleted=True, held_by=("job a (running)",)), NOW)
    assert d.message == "Deletion waits for: job a (running)"
    d = decide(VolumeView(status="submitted", next_attempt_at=LATER), NOW)
    assert d.recheck == 30.0
    d = decide(VolumeView(status="active", auto_cleanup=60, idle_since=NOW), NOW)
    assert (d.action, d.recheck) == (WAIT, 60.0)


def test_stuck_attachments_are_flagged_on_active_volumes() -> None:
    assert decide(VolumeView(status="active", stuck=("a1",)), NOW).stuck == ("a1",)


def test_after_success_records_where_the_volume_is() -> None:
    p = VolumeProvisioning(external_id="vol-1", region="r", availability_zone="ra", size_gb=5)
    tr = after(VolumeView(status="submitted"), VolumeDecision(CREATE), Outcome(provisioning=p),
               NOW)  # fmt: skip
    assert tr.values["status"] == "active" and tr.values["external_id"] == "vol-1"
    assert "Volume status changed SUBMITTED -> ACTIVE" in tr.events


def test_after_transient_failure_backs_off_then_fails_past_the_schedule() -> None:
    v = VolumeView(status="submitted", backoff=(15.0, 30.0))
    tr = after(v, VolumeDecision(CREATE), Outcome(ok=False, error="throttled"), NOW)
    assert tr.values["attempts"] == 1
    assert tr.values["next_attempt_at"] == NOW + timedelta(seconds=15)
    assert tr.events == ["Creating the volume failed (attempt 1): throttled; next try in 15s"]
    v2 = VolumeView(status="submitted", backoff=(15.0, 30.0), attempts=1)
    tr = after(v2, VolumeDecision(CREATE), Outcome(ok=False, error="throttled"), NOW)
    assert tr.values["next_attempt_at"] == NOW + timedelta(seconds=30)
    v3 = VolumeView(status="submitted", backoff=(15.0, 30.0), attempts=2)
    tr = after(v3, VolumeDecision(CREATE), Outcome(ok=False, error="throttled"), NOW)
    assert tr.values["status"] == "failed"


def test_after_a_failing_delete_keeps_retrying_at_the_last_step() -> None:
    v = VolumeView(status="active", to_be_deleted=True, backoff=(15.0, 30.0), attempts=7)
    tr = after(v, VolumeDecision(DELETE_CLOUD), Outcome(ok=False, error="in use"), NOW)
    assert "status" not in tr.values
    assert tr.values["next_attempt_at"] == NOW + timedelta(seconds=30)


def test_after_permanent_failure_fails_at_once() -> None:
    tr = after(VolumeView(status="submitted", external=True), VolumeDecision(REGISTER),
               Outcome(ok=False, error="no such volume", permanent=True), NOW)  # fmt: skip
    assert tr.values["status"] == "failed"
    assert tr.values["status_message"] == "Registering the volume failed: no such volume"


def test_after_cleanup_marks_for_deletion_and_a_message_is_said_once() -> None:
    tr = after(VolumeView(status="active", auto_cleanup=60), VolumeDecision(CLEANUP), Outcome(),
               NOW)  # fmt: skip
    assert tr.values == {"to_be_deleted": True, "dirty": True}
    v = VolumeView(status="active", to_be_deleted=True, message="Deletion waits for: x")
    same = after(v, VolumeDecision(message="Deletion waits for: x"), Outcome(), NOW)
    assert same.events == [] and same.values == {}
