"""`dstack fleet` table (cli.md §10): a dimmed fleet row, then `   instance=N` rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dstack.cli.render.format import (
    backend_cell,
    format_price,
    gpu_cell,
    pretty_date,
    resources_cell,
)

COLUMNS = ["NAME", "NODES", "GPU", "SPOT", "BACKEND", "PRICE", "STATUS", "CREATED"]
VERBOSE_COLUMNS = [
    "NAME", "NODES", "RESOURCES", "DRIVER", "SPOT", "BACKEND", "PRICE", "STATUS", "CREATED",
    "ERROR",
]  # fmt: skip


def nodes_text(conf: dict[str, Any], verbose: bool = False) -> str:
    ssh = conf.get("ssh_config")
    if ssh:
        text = str(len(ssh.get("hosts") or []))
    else:
        nodes = conf.get("nodes")
        if isinstance(nodes, dict):
            low, high = nodes.get("min") or 0, nodes.get("max")
            text = str(low) if low == high else f"{low}..{'' if high is None else high}"
        else:
            text = "" if nodes is None else str(nodes)
    if verbose and conf.get("placement") == "cluster":
        text += " (cluster)"
    return text


def fleet_gpu_text(conf: dict[str, Any]) -> str:
    """`H100:8`, `gpu:0..8` from the fleet's resource requirement."""
    gpu = (conf.get("resources") or {}).get("gpu")
    if not isinstance(gpu, dict):
        return "-"
    count = gpu.get("count") or {}
    low, high = count.get("min"), count.get("max")
    count_text = str(low) if low == high else f"{low or 0}..{'' if high is None else high}"
    if low == 0 and high == 0:
        return "-"
    names = gpu.get("name")
    label = ",".join(names) if names else "gpu"
    return f"{label}:{count_text}"


def fleet_row(fleet: Any, verbose: bool, now: datetime | None) -> dict[str, str]:
    conf = fleet.spec.configuration
    ssh = bool(conf.get("ssh_config"))
    backends = conf.get("backends")
    max_price = conf.get("max_price")
    return {
        "NAME": fleet.name,
        "NODES": nodes_text(conf, verbose),
        "GPU": fleet_gpu_text(conf),
        "RESOURCES": "",
        "SPOT": "" if ssh else (conf.get("spot_policy") or "on-demand"),
        "BACKEND": "ssh" if ssh else (", ".join(backends) if backends else "*"),
        "PRICE": f"$0..{format_price(max_price)[1:]}" if max_price else "",
        "STATUS": fleet.status.value,
        "CREATED": pretty_date(fleet.created_at, now),
        "ERROR": fleet.status_message or "",
        "_style": "secondary",
    }


def instance_status(instance: Any) -> str:
    status = instance.status.value
    if status in ("idle", "busy") and (instance.total_blocks or 1) > 1:
        status = f"{instance.busy_blocks}/{instance.total_blocks} busy"
    if instance.unreachable:
        status += " (unreachable)"
    elif instance.health_status not in ("healthy", "", None):
        status += f" ({instance.health_status})"
    return status


def instance_row(instance: Any, verbose: bool, now: datetime | None) -> dict[str, str]:
    resources = instance.instance_type.resources if instance.instance_type else None
    region = instance.region
    if verbose and instance.availability_zone:
        region = f"{region} ({instance.availability_zone})"
    return {
        "NAME": f"   instance={instance.instance_num}",
        "GPU": gpu_cell(resources.gpus)[4:] if resources and resources.gpus else "-",
        "RESOURCES": resources_cell(resources) if resources else "-",
        "DRIVER": instance.gpu_driver or "",
        "SPOT": ("spot" if resources.spot else "on-demand") if resources else "",
        "BACKEND": backend_cell(instance.backend, region),
        "PRICE": format_price(instance.price),
        "STATUS": instance_status(instance),
        "CREATED": pretty_date(instance.created, now),
        "ERROR": instance.termination_reason_message or "",
    }


def fleet_rows(fleet: Any, verbose: bool = False, now: datetime | None = None) -> list[dict]:
    rows = [fleet_row(fleet, verbose, now)]
    for instance in sorted(fleet.instances, key=lambda i: i.instance_num):
        if instance.status.value == "terminated" and not verbose:
            continue
        rows.append(instance_row(instance, verbose, now))
    return rows


def fleets_table(fleets: list[Any], verbose: bool = False, now: datetime | None = None):  # noqa: ANN201
    from dstack.cli.render.tables import make_table

    cols = VERBOSE_COLUMNS if verbose else COLUMNS
    rows: list[dict] = []
    for fleet in sorted(fleets, key=lambda f: f.created_at, reverse=True):
        rows.extend(fleet_rows(fleet, verbose, now))
    return make_table(
        cols, [[r.get(c, "") for c in cols] for r in rows], styles=[r.get("_style") for r in rows]
    )
