"""The fleet transition table of `reconcilers/fleets.py`: keeping a backend fleet at
`nodes.min`, with its retry policy."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dstack.server.reconcilers.fleets import Failure, FleetView, after_offer, decide

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
RETRY = {"on_events": ["no-capacity", "interruption", "error"], "duration": 600}


def fail(ago: float, reason: str = "no_offers") -> Failure:
    return Failure(reason, "no capacity", NOW - timedelta(seconds=ago))


def test_terminating_fleet_is_deleted_once_its_instances_are_gone() -> None:
    d = decide(FleetView("terminating", 0), NOW)
    assert d.status == "terminated" and d.deleted
    assert decide(FleetView("terminating", 1), NOW).status is None


def test_at_min_nothing_happens_and_a_stale_message_is_cleared() -> None:
    d = decide(FleetView("active", 2, nodes_min=2, message="No instance created: x"), NOW)
    assert d.action == "wait" and d.message is None


def test_below_min_looks_for_an_offer_for_the_missing_instances() -> None:
    d = decide(FleetView("active", 1, nodes_min=3), NOW)
    assert d.action == "find_offer" and d.create == 2
    created = after_offer(d, object(), None)  # type: ignore[arg-type]
    assert created.action == "create" and created.create == 2 and created.message is None


def test_no_offer_says_why() -> None:
    d = after_offer(decide(FleetView("active", 0, nodes_min=1), NOW), None, "no offers: gpu")
    assert d.action == "wait" and d.message == "No instance created: no offers: gpu"


def test_a_failure_without_retry_stops_creating_with_a_message() -> None:
    d = decide(FleetView("active", 0, nodes_min=1, failures=(fail(1),)), NOW)
    assert d.action == "wait" and "does not cover no-capacity" in d.message
    only_errors = {"on_events": ["error"], "duration": 600}
    d = decide(FleetView("active", 0, nodes_min=1, failures=(fail(1),), retry=only_errors), NOW)
    assert d.action == "wait"


def test_retry_waits_the_backoff_then_tries_again_within_the_duration() -> None:
    base = dict(status="active", live_instances=0, nodes_min=1, retry=RETRY, backoff=(15.0, 60.0))
    assert decide(FleetView(**base, failures=(fail(5),)), NOW).action == "wait"
    assert decide(FleetView(**base, failures=(fail(20),)), NOW).action == "find_offer"
    two = (fail(100), fail(30, "error"))
    assert decide(FleetView(**base, failures=two), NOW).action == "wait"  # 2nd backoff: 60 s
    late = (fail(700), fail(100))
    d = decide(FleetView(**base, failures=late), NOW)
    assert d.action == "wait" and "retry.duration" in d.message


def test_below_min_waits_while_an_instance_is_still_terminating() -> None:
    """Its outcome (a failure to come up, or an idle timeout) decides what comes next: a
    replacement created meanwhile would skip the failure's backoff and retry rules."""
    d = decide(FleetView("active", 0, ending=1, nodes_min=1), NOW)
    assert d.action == "wait" and d.create == 0
