"""`dstack apply` for volumes (cli.md §2 "Volume configurations"): the server's plan (it checks
the backend or fleet and compares with an existing volume of that name), confirm, create, and
wait for `active`.

A volume is never re-created behind the user's back: the same configuration again is "no
changes"; a different one is refused by the server with what differs (delete it first).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from dstack.api.client import APIClient
from dstack.cli.common import CLIError, confirm, echo, out


def plan_pairs(api: APIClient, plan: dict[str, Any], path: str) -> list[tuple[str, str]]:
    pairs = [("Project", plan.get("project_name") or api.project or ""),
             ("User", plan.get("user") or ""), ("Configuration", path), ("Type", "volume"),
             ("Volume type", plan.get("volume_type") or "")]  # fmt: skip
    if plan.get("fleet"):
        pairs.append(("Fleet", plan["fleet"]))
        return pairs
    region = plan.get("region") or ""
    if plan.get("availability_zone"):
        region = f"{region} ({plan['availability_zone']})"
    pairs += [("Backend", plan.get("backend") or ""), ("Region", region)]
    size = plan.get("size_gb")
    pairs.append(("Size", f"{size:g}GB" if isinstance(size, int | float) else "-"))
    if plan.get("volume_id"):
        pairs.append(("Volume ID", plan["volume_id"]))
    return pairs


def apply_volume(args: argparse.Namespace, api: APIClient, data: dict[str, Any], path: str) -> int:
    from dstack.cli.render.tables import properties_table

    name = data["name"]
    plan = api.get_volume_plan(data)
    out(properties_table(plan_pairs(api, plan, path)))
    out()
    if plan.get("action") == "no_changes":
        echo(f"Found volume {name}. No configuration changes detected.")
        return 0
    echo(f"Volume {name} does not exist yet.")
    if not args.yes and not confirm("Create the volume?"):
        echo("Exiting...")
        return 0
    api.create_volume(data)
    if args.detach:
        echo("Volume configuration submitted. Exiting...")
        return 0
    return wait_active(api, name)


def wait_active(api: APIClient, name: str, timeout: float = 1800.0, poll: float = 1.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = api.get_volume_raw(name)
        status = raw.get("status")
        if status == "active":
            echo(f"Volume {name} is active")
            return 0
        if status == "failed":
            raise CLIError(f"Provisioning failed. Error: {raw.get('status_message') or ''}")
        time.sleep(poll)
    raise CLIError(f"Volume {name} is still being created; check `dstack volume -v`")
