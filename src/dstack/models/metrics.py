"""Job metrics on the wire: `GET /api/project/{p}/metrics/job/{run}` answers named series.

The names are the original's, so dashboards and scripts carry over: `cpu_usage_percent`,
`memory_usage_bytes`, `memory_working_set_bytes`, `gpus_detected_num`, and for each GPU i of
the job `gpu_util_percent_gpu{i}`, `gpu_memory_usage_bytes_gpu{i}`,
`gpu_power_draw_watts_gpu{i}`, `gpu_temperature_celsius_gpu{i}`.
"""

from __future__ import annotations

from datetime import datetime

from dstack.models.wire import WireModel

CPU_USAGE_PERCENT = "cpu_usage_percent"
MEMORY_USAGE_BYTES = "memory_usage_bytes"
MEMORY_WORKING_SET_BYTES = "memory_working_set_bytes"
GPUS_DETECTED_NUM = "gpus_detected_num"
# Per GPU: the name is the prefix followed by `_gpu{i}`, by the reading's key in a sample.
GPU_SERIES = {
    "gpu_util_percent": "util",
    "gpu_memory_usage_bytes": "memory_used_bytes",
    "gpu_power_draw_watts": "power_watts",
    "gpu_temperature_celsius": "temperature_celsius",
}


def gpu_series_name(prefix: str, index: int) -> str:
    return f"{prefix}_gpu{index}"


class Metric(WireModel):
    name: str
    timestamps: list[datetime]
    values: list[float]


class JobMetrics(WireModel):
    metrics: list[Metric]

    def series(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)
