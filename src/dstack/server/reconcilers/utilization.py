"""`utilization_policy`: a running job whose GPUs sit idle for the policy's window is stopped.

| observation (samples of the last `time_window`)            | verdict                     |
|------------------------------------------------------------|-----------------------------|
| job running for less than the window                       | keep (not judged yet)       |
| the samples do not cover the window (COVERAGE; a gap wider | keep: too little to judge   |
| than MAX_GAP of it, the agent late or unreachable)         |                             |
| no GPU in any sample                                       | keep (nothing to measure)   |
| some GPU below `min_gpu_utilization` in every sample       | terminate: that GPU named   |
| every GPU reached the threshold at least once              | keep                        |

"Any GPU" as the original: one idle GPU of eight is a job holding a GPU it does not use. A
sample without a reading of a GPU (util unknown) is not below the threshold, so an unknown
never terminates anybody.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

COVERAGE = 0.8  # the samples must span this share of the window
MAX_GAP = 0.2  # and no gap between them (or after the last one) be wider than this share


@dataclass(frozen=True)
class GpuSample:
    at: datetime
    utils: tuple[float | None, ...]  # per GPU of the job, by its position


def _covered(samples: Sequence[GpuSample], window: float, now: datetime) -> bool:
    if not samples:
        return False
    stamps = [s.at for s in samples] + [now]
    span = (samples[-1].at - samples[0].at).total_seconds()
    gaps = [(b - a).total_seconds() for a, b in zip(stamps[:-1], stamps[1:], strict=True)]
    return span >= COVERAGE * window and max(gaps) <= MAX_GAP * window


def utilization_violation(
    min_gpu_utilization: float,
    time_window: float,
    samples: Sequence[GpuSample],
    running_at: datetime | None,
    now: datetime,
) -> str | None:
    """Why the job breaks its policy (a message naming the idle GPU), or None.

    `samples`: the job's samples, oldest first; those outside the window are ignored."""
    if running_at is None or now - running_at < timedelta(seconds=time_window):
        return None
    start = now - timedelta(seconds=time_window)
    inside = [s for s in samples if start <= s.at <= now]
    if not _covered(inside, time_window, now):
        return None
    count = max(len(s.utils) for s in inside)
    for gpu in range(count):
        utils = [s.utils[gpu] if gpu < len(s.utils) else None for s in inside]
        if all(u is not None and u < min_gpu_utilization for u in utils):
            peak = max(u for u in utils if u is not None)
            return (
                f"GPU {gpu} utilization stayed below {min_gpu_utilization:g}% for "
                f"{int(time_window)}s (at most {peak:g}%)"
            )
    return None
