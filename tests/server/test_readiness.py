"""The one readiness predicate of service replicas (models/readiness.py), shared by the proxy's
registry, the prober and the run reconciler."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from dstack.models.readiness import ReplicaFacts, is_ready, may_serve, probes_passed

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
COOLDOWN = 10.0
BASE = ReplicaFacts(job_num=0, status="running", has_probes=True, probes_passed=True)
NO_PROBES = replace(BASE, has_probes=False, probes_passed=False)


def failed(seconds_ago: float) -> ReplicaFacts:
    return replace(BASE, unhealthy_at=NOW - timedelta(seconds=seconds_ago))


def test_probes_pass_when_every_streak_reaches_its_ready_after():
    probes = [{"ready_after": 2}, {"ready_after": 1}]
    assert not probes_passed([1, 5], probes)
    assert probes_passed([2, 1], probes)
    assert not probes_passed([0], [{}])  # ready_after defaults to 1
    assert probes_passed([], [])


@pytest.mark.parametrize(
    ("name", "facts", "ready"),
    [
        ("running, probes passed", BASE, True),
        ("no probes: running is enough", NO_PROBES, True),
        ("probes not passed yet", replace(BASE, probes_passed=False), False),
        ("not running yet", replace(BASE, status="provisioning"), False),
        ("stopping", replace(BASE, status="terminating"), False),
        ("asked to stop, still running", replace(BASE, stop_requested=True), False),
        ("not job 0 of the replica", replace(BASE, job_num=1), False),
        ("proxy saw it fail just now", failed(3), False),
        ("failure older than the cooldown", failed(11), True),
    ],
)
def test_is_ready(name: str, facts: ReplicaFacts, ready: bool) -> None:
    assert is_ready(facts, NOW, COOLDOWN) is ready, name


def test_the_prober_probes_what_may_serve_whatever_its_probes_say():
    assert may_serve(replace(BASE, probes_passed=False))
    assert may_serve(replace(BASE, unhealthy_at=NOW))  # a probe success is what clears the mark
    assert not may_serve(replace(BASE, stop_requested=True))
    assert not may_serve(replace(BASE, status="submitted"))
