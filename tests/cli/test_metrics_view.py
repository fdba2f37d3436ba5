"""`dstack metrics` rendering: sparklines over the hour and the rows of one job."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dstack.cli.metrics_view import human_bytes, job_rows, sparkline, time_axis
from dstack.models.metrics import JobMetrics, Metric

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


def test_sparkline_slots_scale_and_gaps() -> None:
    points = [(ago(59), 0.0), (ago(30), 50.0), (ago(0.5), 100.0)]
    line = sparkline(points, NOW, top=100.0, width=4)
    assert line == "▁ ▅█"  # 15-minute slots: the second holds nothing
    assert sparkline([(ago(1), 5.0), (ago(2), 10.0)], NOW, top=10, width=1) == "▆"  # 7.5 of 10
    assert sparkline([(ago(1), 5.0), (ago(2), 10.0)], NOW, width=1) == "█"  # its own top
    assert sparkline([(ago(90), 1.0)], NOW, width=3) == "   "  # older than the hour
    assert sparkline([(ago(1), 0.0)], NOW, width=1) == "▁"


def test_job_rows() -> None:
    stamps = [ago(2), ago(1)]

    def metric(name: str, values: list[float]) -> Metric:
        return Metric(name=name, timestamps=stamps, values=values)

    data = JobMetrics(
        metrics=[
            metric("cpu_usage_percent", [10.0, 37.4]),
            metric("memory_usage_bytes", [2**30, 2**30]),
            metric("memory_working_set_bytes", [2**29, 12 * 2**30]),
            metric("gpus_detected_num", [1, 1]),
            metric("gpu_util_percent_gpu0", [90.0, 95.0]),
            metric("gpu_memory_usage_bytes_gpu0", [70 * 2**30, 71 * 2**30]),
        ]
    )
    rows = job_rows("job=0", data, NOW)
    assert [r[:2] for r in rows] == [("job=0", "cpu"), ("", "gpu=0")]
    assert rows[0][2].endswith(" 37%") and rows[0][3].endswith(" 12GB")
    assert rows[1][2].endswith(" 95%") and rows[1][3].endswith(" 71GB")
    empty = job_rows("replica=1 job=0", JobMetrics(metrics=[]), NOW)
    assert empty == [("replica=1 job=0", "cpu", "no data", "no data")]


def test_units_and_axis() -> None:
    assert human_bytes(512) == "512B" and human_bytes(1.5 * 2**20) == "1.5MB"
    assert human_bytes(80 * 2**30) == "80GB"
    assert time_axis(True, width=10) == "-1h    now"
    assert time_axis(False, width=10).endswith("last")
