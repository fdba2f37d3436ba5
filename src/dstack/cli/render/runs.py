"""`dstack ps` layout (cli.md §4): one merged row per single-job run, otherwise a run row
followed by indented job rows."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from dstack.cli.render.format import (
    backend_cell,
    format_price,
    gpu_cell,
    pretty_date,
    resources_cell,
)

COLUMNS = ["NAME", "BACKEND", "GPU", "PRICE", "STATUS", "SUBMITTED"]
VERBOSE_COLUMNS = [
    "NAME", "BACKEND", "RESOURCES", "INSTANCE TYPE", "PRICE", "STATUS", "PROBES", "SUBMITTED",
    "ERROR",
]  # fmt: skip

Row = dict[str, str]


def columns(verbose: bool) -> list[str]:
    return VERBOSE_COLUMNS if verbose else COLUMNS


def _latest(job: Any) -> Any:
    return job.job_submissions[-1] if job.job_submissions else None


def _instance_resources(sub: Any) -> Any:
    """The share of the instance the job got (blocks) when known, else the whole instance."""
    runtime = sub.job_runtime_data
    if runtime is not None and runtime.offer is not None:
        return runtime.offer.instance.resources
    return sub.job_provisioning_data.instance_type.resources


def _probes(job: Any, sub: Any) -> str:
    specs = job.job_spec.probes or []
    symbols = []
    for i, probe in enumerate(sub.probes or []):
        streak = probe.get("success_streak", 0) or 0
        ready_after = (specs[i].get("ready_after") if i < len(specs) else None) or 1
        symbols.append("✓" if streak >= ready_after else "~" if streak > 0 else "×")
    return " ".join(symbols)


# Reasons whose short error text alone would hide what to fix (which port, which host).
DETAILED_ERRORS = ("ports_binding_failed",)


def _error(sub: Any) -> str:
    if sub.error and sub.termination_reason in DETAILED_ERRORS and sub.termination_reason_message:
        return f"{sub.error}: {sub.termination_reason_message}"
    return sub.error or sub.termination_reason_message or ""


def job_cells(job: Any, now: datetime | None = None) -> Row:
    """Every cell a job can fill; rows pick the ones their layout needs."""
    sub = _latest(job)
    if sub is None:
        return {"STATUS": "", "GPU": "-", "RESOURCES": "-", "PRICE": "-"}
    cells: Row = {
        "STATUS": sub.status_message or sub.status.value,
        "SUBMITTED": pretty_date(sub.submitted_at, now),
        "ERROR": _error(sub),
        "PROBES": _probes(job, sub),
    }
    jpd = sub.job_provisioning_data
    if jpd is None:
        cells.update({"GPU": "-", "RESOURCES": "-", "PRICE": "-"})
        return cells
    res = _instance_resources(sub)
    spot = " (spot)" if res.spot else ""
    instance_type = jpd.instance_type.name
    offer = sub.job_runtime_data.offer if sub.job_runtime_data else None
    if offer is not None and offer.total_blocks > 1:
        instance_type += f" ({offer.blocks}/{offer.total_blocks})"
    if jpd.reservation:
        instance_type += f" ({jpd.reservation})"
    cells.update(
        {
            "BACKEND": backend_cell(jpd.backend, jpd.region),
            "GPU": gpu_cell(res.gpus),
            "RESOURCES": resources_cell(res),
            "INSTANCE TYPE": instance_type,
            "PRICE": format_price(jpd.price) + spot,
        }
    )
    return cells


def _show_deployment(run: Any, verbose: bool) -> bool:
    if verbose and run.run_spec.configuration.get("type") == "service":
        return True
    return any(
        (sub := _latest(job)) is not None and sub.deployment_num != run.deployment_num
        for job in run.jobs
    )


def _job_label(run: Any, job: Any, show_deployment: bool) -> str:
    spec = job.job_spec
    parts = []
    if len({j.job_spec.replica_num for j in run.jobs}) > 1:
        parts.append(f"replica={spec.replica_num}")
    if spec.jobs_per_replica > 1 or len({j.job_spec.job_num for j in run.jobs}) > 1:
        parts.append(f"job={spec.job_num}")
    sub = _latest(job)
    if show_deployment and sub is not None:
        parts.append(f"deployment={sub.deployment_num}")
    return "   " + " ".join(parts)


def run_status_text(run: Any) -> str:
    """A finished run shows how its first job ended (`exited (0)`, `stopped`, `no capacity`),
    an unfinished one the server's run message (cli.md, `dstack ps`)."""
    sub = run.latest_job_submission
    if run.status.is_finished() and sub is not None and sub.status_message:
        return sub.status_message
    text = run.status_message or run.status.value
    if getattr(run, "next_triggered_at", None) is not None and not run.status.is_finished():
        text += f" (next start {next_start_text(run)})"
    return text


def next_start_text(run: Any) -> str:
    """A scheduled run's next start, in UTC as the cron is written."""
    return run.next_triggered_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def run_rows(run: Any, verbose: bool = False, now: datetime | None = None) -> list[Row]:
    """Rows for one run; rows of a multi-job run after the first carry `_style`."""
    show_deployment = _show_deployment(run, verbose)
    run_row: Row = {
        "NAME": run.run_spec.run_name or "",
        "STATUS": run_status_text(run),
        "SUBMITTED": pretty_date(run.submitted_at, now),
        "ERROR": run.error or "",
    }
    if len(run.jobs) == 1 and not show_deployment:
        cells = job_cells(run.jobs[0], now)
        merged = {**cells, **{k: v for k, v in run_row.items() if v or k != "ERROR"}}
        return [merged, *(tried_rows(run.jobs[0]) if verbose else [])]
    if show_deployment:
        run_row["NAME"] += f" deployment={run.deployment_num}"
    run_row.update({"GPU": "-", "RESOURCES": "-", "PRICE": "-"})
    rows = [run_row]
    jobs = sorted(run.jobs, key=lambda j: (j.job_spec.replica_num, j.job_spec.job_num))
    for job in jobs:
        row = job_cells(job, now)
        row["NAME"] = _job_label(run, job, show_deployment)
        if len(run.jobs) > 1:
            row["_style"] = "secondary"
        rows.append(row)
        if verbose:
            rows.extend(tried_rows(job))
    return rows


def tried_rows(job: Any) -> list[Row]:
    """`ps -v`: each offer the latest submission tried and why it failed (oldest first)."""
    sub = _latest(job)
    rows: list[Row] = []
    for o in getattr(sub, "tried_offers", None) or []:
        rows.append(
            {
                "NAME": "    offer tried",
                "BACKEND": backend_cell(o.backend, o.region),
                "INSTANCE TYPE": o.instance_type,
                "PRICE": format_price(o.price) + (" (spot)" if o.spot else ""),
                "STATUS": "failed",
                "ERROR": o.message,
                "_style": "secondary",
            }
        )
    return rows


def runs_table(runs: list[Any], verbose: bool = False, now: datetime | None = None):  # noqa: ANN201
    from dstack.cli.render.tables import make_table

    cols = columns(verbose)
    rows: list[Row] = []
    for run in runs:
        rows.extend(run_rows(run, verbose, now))
    return make_table(
        cols,
        [[r.get(c, "") for c in cols] for r in rows],
        styles=[r.get("_style") for r in rows],
    )
