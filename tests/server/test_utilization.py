"""utilization_policy's verdict (reconcilers/utilization.py): one table of (samples, running
time) -> terminate or not."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dstack.server.reconcilers.utilization import GpuSample, utilization_violation

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
WINDOW = 300
LONG_AGO = NOW - timedelta(hours=1)


def every(seconds: int, utils: tuple[float | None, ...], span: int = WINDOW) -> list[GpuSample]:
    """Samples each `seconds` over the last `span` seconds, all with the same readings."""
    return [GpuSample(NOW - timedelta(seconds=s), utils) for s in range(span, -1, -seconds)]


def with_spike(samples: list[GpuSample], gpu: int, value: float) -> list[GpuSample]:
    middle = len(samples) // 2
    utils = list(samples[middle].utils)
    utils[gpu] = value
    return [*samples[:middle], GpuSample(samples[middle].at, tuple(utils)), *samples[middle + 1 :]]


CASES = [
    ("both-idle", every(10, (2.0, 3.0)), LONG_AGO, "GPU 0"),
    ("one-idle-of-two", every(10, (90.0, 1.0)), LONG_AGO, "GPU 1"),
    ("all-busy", every(10, (90.0, 80.0)), LONG_AGO, None),
    ("idle-but-one-spike", with_spike(every(10, (2.0,)), 0, 50.0), LONG_AGO, None),
    ("exactly-the-threshold-is-not-below", every(10, (10.0,)), LONG_AGO, None),
    ("running-shorter-than-window", every(10, (0.0,)), NOW - timedelta(seconds=200), None),
    ("not-running", every(10, (0.0,)), None, None),
    ("half-covered", every(10, (0.0,), span=150), LONG_AGO, None),
    ("agent-silent-lately", every(10, (0.0,))[:-10], LONG_AGO, None),
    ("sparse-but-covered", every(50, (0.0,)), LONG_AGO, "GPU 0"),
    ("big-gap-in-the-middle", every(10, (0.0,))[:5] + every(10, (0.0,))[-15:], LONG_AGO, None),
    ("unknown-util-never-terminates", every(10, (None,)), LONG_AGO, None),
    ("no-gpus", every(10, ()), LONG_AGO, None),
    ("no-samples", [], LONG_AGO, None),
]


@pytest.mark.parametrize(
    ("samples", "running_at", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_verdict(
    samples: list[GpuSample], running_at: datetime | None, expected: str | None
) -> None:
    verdict = utilization_violation(10, WINDOW, samples, running_at, NOW)
    if expected is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.startswith(expected)


def test_samples_outside_the_window_are_ignored() -> None:
    old_busy = [GpuSample(NOW - timedelta(seconds=400), (99.0,))]
    verdict = utilization_violation(10, WINDOW, old_busy + every(10, (1.0,)), LONG_AGO, NOW)
    assert verdict == "GPU 0 utilization stayed below 10% for 300s (at most 1%)"
