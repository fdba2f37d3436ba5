"""`dstack apply` for fleets (cli.md §2 "Fleet configurations"): read the SSH keys here (keys
are read client-side), ask the server for the plan, confirm, apply, and watch provisioning.

A change the server cannot make in place is a re-create: the fleet is deleted and awaited
first, then created again.
"""

from __future__ import annotations

import argparse
import os
import stat
import time
from pathlib import Path
from typing import Any

from dstack.api.client import APIClient
from dstack.cli.common import CLIError, confirm, echo, out
from dstack.errors import ClientError


def read_key(path: str, where: str) -> dict[str, str]:
    """The private key at `path`, refused when missing or readable by others (as ssh does)."""
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise CLIError(f"{where}: identity_file {path} does not exist")
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise CLIError(
            f"{where}: identity_file {path} has permissions {mode:04o}; a private key must not "
            f"be accessible by others (run: chmod 600 {path})"
        )
    try:
        private = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"{where}: cannot read identity_file {path}: {e}") from e
    if "PRIVATE KEY" not in private:
        raise CLIError(f"{where}: identity_file {path} is not a private key")
    key: dict[str, str] = {"private": private}
    pub = p.with_name(p.name + ".pub")
    if pub.is_file():
        key["public"] = pub.read_text().strip()
    return key


def attach_keys(data: dict[str, Any]) -> None:
    """Put each `identity_file`'s key next to it as `ssh_key`."""
    ssh = data.get("ssh_config")
    if not ssh:
        return

    def one(obj: dict[str, Any], where: str) -> None:
        if obj.get("identity_file") and not obj.get("ssh_key"):
            obj["ssh_key"] = read_key(obj["identity_file"], where)
        if obj.get("proxy_jump"):
            one(obj["proxy_jump"], f"{where}.proxy_jump")

    one(ssh, "ssh_config")
    for i, h in enumerate(ssh.get("hosts") or []):
        if isinstance(h, dict):
            one(h, f"ssh_config.hosts[{i}]")


def apply_fleet(
    args: argparse.Namespace,
    api: APIClient,
    data: dict[str, Any],
    path: str,
    print_header: Any,
) -> int:
    name = data["name"]
    attach_keys(data)
    spec = {"configuration": data, "configuration_path": path, "profile": None}
    try:
        plan = api.get_fleet_plan(spec)
    except ClientError as e:
        if e.status_code == 404:
            raise CLIError(
                f"This server does not support fleet configurations yet ({e.message})"
            ) from e
        raise
    print_header(api, "fleet", data, path)
    action = plan.get("action", "create")
    changes = plan.get("changes") or []
    if action == "create":
        echo(f"Fleet {name} does not exist yet.")
        question = "Create the fleet?"
    elif action == "no_changes":
        echo(f"Found fleet {name}. No configuration changes detected.")
        if args.yes and not args.force:
            echo("No configuration changes detected. Use --force to apply anyway.")
            return 0
        question = "Re-create the fleet?"
        action = "recreate"
    elif action == "update":
        echo(f"Found fleet {name}. Detected changes that can be updated in-place:")
        for c in changes:
            echo(f"  - {c}")
        question = "Update the fleet in-place?"
    else:
        echo(f"Found fleet {name}. Detected changes that cannot be updated in-place:")
        for c in changes:
            echo(f"  - {c}")
        question = "Re-create the fleet?"
    if not args.yes and not confirm(question):
        echo("Exiting...")
        return 0
    if action == "recreate":
        api.delete_fleets([name])
        _wait_deleted(api, name)
    api.apply_fleet(spec, current=None, force=False)
    if args.detach:
        echo("Fleet configuration submitted. Exiting...")
        return 0
    return _wait(api, name)


def _wait_deleted(api: APIClient, name: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            api.get_fleet_raw(name)
        except ClientError:
            return
        time.sleep(0.5)
    raise CLIError(f"Fleet {name} is still being deleted; try again later")


def _wait(api: APIClient, name: str, timeout: float = 1800.0) -> int:
    from dstack.cli.render.fleets import fleets_table

    echo(f"Provisioning {name}...")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet = api.get_fleet(name)
        pending = [
            i
            for i in fleet.instances
            if i.status.value in ("pending", "provisioning", "terminating")
        ]
        if not pending:
            out(fleets_table([fleet]))
            failed = [
                i
                for i in fleet.instances
                if i.status.value == "terminated" and i.termination_reason == "error"
            ]
            if fleet.status.value == "failed" or failed:
                for i in failed:
                    echo(f"{i.name}: {i.termination_reason_message}")
                raise CLIError("Some instances failed. Check `dstack fleet -v` for errors")
            return 0
        time.sleep(0.5)
    raise CLIError(f"Fleet {name} is still provisioning; check `dstack fleet`")
