"""Rendering of `dstack metrics`: one row per job for the CPU and one per GPU, each cell a
sparkline of the last hour followed by the latest value (the original's layout).

Pure functions over the API's series, so the table is tested without a server."""

from __future__ import annotations

from datetime import datetime, timedelta

from dstack.models import metrics as m

BLOCKS = "▁▂▃▄▅▆▇█"
WIDTH = 30  # sparkline cells: two minutes each over the hour
SPAN = timedelta(hours=1)


def sparkline(
    points: list[tuple[datetime, float]],
    now: datetime,
    top: float | None = None,
    width: int = WIDTH,
    span: timedelta = SPAN,
) -> str:
    """One block per time slot of `span / width` ending at `now` (a slot's mean; a blank where
    no point fell), scaled to `top` (default: the largest value)."""
    slot = span / width
    start = now - span
    sums, counts = [0.0] * width, [0] * width
    for at, value in points:
        if not start <= at <= now:
            continue
        i = min(int((at - start) / slot), width - 1)
        sums[i] += value
        counts[i] += 1
    means = [sums[i] / counts[i] if counts[i] else None for i in range(width)]
    scale = top if top else max((v for v in means if v is not None), default=0.0)
    out = []
    for v in means:
        if v is None:
            out.append(" ")
        else:
            level = 0 if scale <= 0 else round(min(max(v / scale, 0.0), 1.0) * (len(BLOCKS) - 1))
            out.append(BLOCKS[level])
    return "".join(out)


def human_bytes(n: float) -> str:
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value >= 10 else f"{value:.1f}{unit}"
    return f"{n:.0f}B"


def _points(data: m.JobMetrics, name: str) -> list[tuple[datetime, float]]:
    series = data.series(name)
    return list(zip(series.timestamps, series.values, strict=True)) if series else []


def _cell(points: list[tuple[datetime, float]], now: datetime, top: float | None, text: str) -> str:
    if not points:
        return "no data"
    return f"{sparkline(points, now, top)} {text}"


def job_rows(label: str, data: m.JobMetrics, now: datetime) -> list[tuple[str, str, str, str]]:
    """(job label, resource, UTILIZATION cell, MEMORY cell) rows of one job: `cpu`, then
    `gpu=N` for each GPU the job had in its latest point."""
    cpu = _points(data, m.CPU_USAGE_PERCENT)
    mem = _points(data, m.MEMORY_WORKING_SET_BYTES) or _points(data, m.MEMORY_USAGE_BYTES)
    rows = [
        (
            label,
            "cpu",
            _cell(cpu, now, None, f"{cpu[-1][1]:.0f}%" if cpu else ""),
            _cell(mem, now, None, human_bytes(mem[-1][1]) if mem else ""),
        )
    ]
    detected = _points(data, m.GPUS_DETECTED_NUM)
    for i in range(int(detected[-1][1]) if detected else 0):
        util = _points(data, m.gpu_series_name("gpu_util_percent", i))
        used = _points(data, m.gpu_series_name("gpu_memory_usage_bytes", i))
        rows.append(
            (
                "",
                f"gpu={i}",
                _cell(util, now, 100.0, f"{util[-1][1]:.0f}%" if util else ""),
                _cell(used, now, None, human_bytes(used[-1][1]) if used else ""),
            )
        )
    return rows


def time_axis(live: bool, width: int = WIDTH) -> str:
    """The last row: where the hour starts and ends under the sparklines."""
    end = "now" if live else "last"
    return "-1h" + " " * max(width - 3 - len(end), 1) + end
