"""`dstack apply` for fleets, volumes and gateways (cli.md §2).

These use the server's fleets/volumes/gateways endpoints; a server that does not have them
answers 404, which is reported as "not supported by this server" instead of a raw status.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from dstack.api.client import APIClient, ServerError
from dstack.cli.common import CLIError, api_client, confirm, echo, out
from dstack.errors import ClientError


def apply_other(args: argparse.Namespace, conf: Any, path: str) -> int:
    data = conf.model_dump(mode="json")
    if getattr(args, "run_name", None):
        data["name"] = args.run_name
    kind = conf.type
    if not data.get("name"):
        raise CLIError(f"The {kind} configuration must have a `name` (or pass -n NAME)")
    api = api_client(args)
    if kind == "fleet":
        from dstack.cli.apply_fleet import apply_fleet

        return apply_fleet(args, api, data, path, _print_header)
    if kind == "volume":
        from dstack.cli.apply_volume import apply_volume

        return apply_volume(args, api, data, path)
    existing = _get_existing(api, kind, data["name"])
    _print_header(api, kind, data, path)
    name = data["name"]
    if existing is None:
        echo(f"{kind.capitalize()} {name} does not exist yet.")
        question = f"Create the {kind}?"
    else:
        echo(f"Found {kind} {name}.")
        if args.yes and not args.force and _same(existing, data):
            echo("No configuration changes detected. Use --force to apply anyway.")
            return 0
        question = f"Re-create the {kind}?"
    if not args.yes and not confirm(question):
        echo("Exiting...")
        return 0
    try:
        _create(api, kind, data, path, existing, args.force)
    except ClientError as e:
        if e.status_code == 404:
            raise CLIError(
                f"This server does not support {kind} configurations yet ({e.message})"
            ) from e
        raise
    if args.detach:
        echo(f"{kind.capitalize()} configuration submitted. Exiting...")
        return 0
    return _wait(api, kind, name)


def _same(existing: dict[str, Any], data: dict[str, Any]) -> bool:
    stored = existing.get("spec", {}).get("configuration") or existing.get("configuration") or {}
    return all(v is None or stored.get(k) == v for k, v in data.items())


def _get_existing(api: APIClient, kind: str, name: str) -> dict[str, Any] | None:
    getter = {
        "fleet": api.get_fleet_raw,
        "gateway": api.get_gateway_raw,
    }[kind]
    try:
        return getter(name)
    except ServerError as e:
        if e.status_code in (400, 404):
            return None
        raise
    except ClientError as e:
        if e.status_code == 404:
            return None
        raise


def _print_header(api: APIClient, kind: str, data: dict[str, Any], path: str) -> None:
    from dstack.cli.render.tables import properties_table

    pairs = [("Project", api.project or ""), ("User", _user(api)), ("Configuration", path),
             ("Type", kind)]
    if kind == "fleet":
        ssh = data.get("ssh_config")
        pairs.append(("Fleet type", "ssh" if ssh else "cloud"))
        hosts = (ssh or {}).get("hosts") or []
        pairs.append(("Nodes", str(len(hosts)) if ssh else _nodes(data.get("nodes"))))
        pairs.append(("Placement", data.get("placement") or "any"))
        if data.get("backends"):
            pairs.append(("Backends", ", ".join(data["backends"])))
        if data.get("regions"):
            pairs.append(("Regions", ", ".join(data["regions"])))
        if not ssh and data.get("resources"):
            from dstack.cli.render.plan import resources_text

            pairs.append(("Resources", resources_text({}, data)))
        if data.get("reservation"):
            pairs.append(("Reservation", data["reservation"]))
        if not ssh:
            pairs.append(("Spot policy", data.get("spot_policy") or "on-demand"))
    else:
        pairs.append(("Backend", data.get("backend") or ""))
        pairs.append(("Region", data.get("region") or ""))
        pairs.append(("Domain", data.get("domain") or "-"))
    out(properties_table(pairs))
    out()


def _user(api: APIClient) -> str:
    try:
        return api.get_my_user().username
    except ClientError:
        return ""


def _nodes(nodes: Any) -> str:
    if isinstance(nodes, dict):
        low, high = nodes.get("min"), nodes.get("max")
        target = nodes.get("target", low)
        return f"min={low or 0} target={target or 0} max={high if high is not None else ''}"
    return str(nodes) if nodes is not None else "-"


def _create(
    api: APIClient, kind: str, data: dict[str, Any], path: str, existing: Any, force: bool
) -> None:
    if kind == "fleet":
        spec = {"configuration": data, "configuration_path": path, "profile": None}
        api.apply_fleet(spec, current=existing, force=force)
    else:
        if existing is not None:
            api.delete_gateways([data["name"]])
        api.create_gateway(data)


def _wait(api: APIClient, kind: str, name: str, timeout: float = 1800.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if kind == "fleet":
            fleet = api.get_fleet(name)
            pending = [i for i in fleet.instances
                       if i.status.value in ("pending", "provisioning", "terminating")]
            if not pending:
                from dstack.cli.render.fleets import fleets_table

                out(fleets_table([fleet]))
                if fleet.status.value == "failed" or any(
                    i.status.value == "terminated" and i.termination_reason == "error"
                    for i in fleet.instances
                ):
                    raise CLIError("Some instances failed. Check `dstack fleet -v` for errors")
                return 0
        else:
            raw = api.get_gateway_raw(name)
            status = raw.get("status")
            if status == "running":
                echo(f"{kind.capitalize()} {name} is {status}")
                return 0
            if status == "failed":
                raise CLIError(f"Provisioning failed. Error: {raw.get('status_message') or ''}")
        time.sleep(2.0)
    raise CLIError(f"{kind.capitalize()} {name} is still provisioning; check `dstack {kind}`")
