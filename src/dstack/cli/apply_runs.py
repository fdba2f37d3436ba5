"""`dstack apply` for dev environments, tasks and services (cli.md §2 flow).

Whatever the action (submit, in-place update, stop-and-override), the server is asked once,
with `runs/apply`: overriding an active run sends `force` and the server stops the old run and
submits the new one itself (server/reconcilers/runs.py), so a CLI that dies after that call
leaves the replacement on its way rather than nothing running. The CLI then only watches.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from dstack.api.client import APIClient
from dstack.cli.apply_overrides import (
    apply_overrides,
    apply_profile,
    check_exclusive,
    resolve_env,
)
from dstack.cli.common import (
    CLIError,
    api_client,
    check_run_name,
    confirm,
    echo,
    out,
)
from dstack.cli.profiles import selected_profile
from dstack.cli.repo_flags import code_root, repo_creds
from dstack.models.runs import Run, RunPlan, RunSpec, RunStatus


def build_configuration(
    conf: Any, args: argparse.Namespace, environ: dict[str, str]
) -> dict[str, Any]:
    """File → profile → flags → resolved env, validated again as a whole."""
    from dstack.cli.ide_version import fill_version
    from dstack.models.configurations import parse_configuration

    check_exclusive(args)
    data = conf.model_dump(mode="json")
    data = apply_profile(data, selected_profile(args))
    data = apply_overrides(data, args, environ, getattr(args, "run_args", None))
    data = fill_version(data)
    merged = parse_configuration(data)
    result = merged.model_dump(mode="json")
    result["env"] = resolve_env(merged.env, environ)
    if result.get("name"):
        check_run_name(result["name"])
    return result


def upload_code(api: APIClient, root: Path) -> str:
    from dstack.api.code import archive_hash, build_archive, upload_limit

    data = build_archive(root, upload_limit())
    code_hash = api.upload_code(data, repo_id="none")
    return code_hash or archive_hash(data)


def _upload_files(api: APIClient, configuration: dict[str, Any], path: str) -> list[Any]:
    from dstack.api.code import upload_limit
    from dstack.api.file_archives import upload_files
    from dstack.models.runs import FileArchiveMapping

    base = Path.cwd() if path == "-" else Path(path).resolve().parent
    entries = upload_files(api, configuration, base, upload_limit())
    return [FileArchiveMapping(**e) for e in entries]


def make_run_spec(
    configuration: dict[str, Any], path: str, code_hash: str | None, ssh_key_pub: str | None = None
) -> RunSpec:
    profile_name = "default"
    return RunSpec(
        ssh_key_pub=ssh_key_pub,
        run_name=configuration.get("name"),
        repo_code_hash=code_hash,
        configuration_path=None if path == "-" else path,
        configuration=configuration,
        profile={"name": profile_name, "default": False},
    )


def apply_run(args: argparse.Namespace, conf: Any, path: str) -> int:
    configuration = build_configuration(conf, args, dict(os.environ))
    _warn_scaling(configuration)
    api = api_client(args)
    code_hash = None
    root = None if args.no_repo else code_root(configuration, path)
    if root is not None:
        code_hash = upload_code(api, root)
    spec = make_run_spec(configuration, path, code_hash, _ssh_key_pub(args))
    creds = repo_creds(args)
    if creds:
        spec = spec.model_copy(update={"repo_data": {**spec.repo_data, "repo_creds": creds}})
    if configuration.get("files"):
        spec = spec.model_copy(update={"file_archives": _upload_files(api, configuration, path)})
    plan = _get_plan(api, spec, args.max_offers)
    print_plan(plan, args.verbose, args.max_offers, lambda: _has_fleets(api))
    current = plan.current_resource
    name = spec.run_name
    if current is not None and not current.status.is_finished():
        decision = _decide_active(spec, current, args)
        if decision is None:
            return 0
    else:
        decision = "submit"
        question = f"Submit the run {name}?" if name else "Submit a new run?"
        if not args.yes and not confirm(question):
            echo("Exiting...")
            return 0
    if not args.detach:
        _check_local_ports(configuration, getattr(args, "host", None))
    if decision == "override":
        run = _submit(api, spec, None, force=True)
    else:
        run = _submit(api, spec, current if decision == "update" else None)
    replacing = decision == "override" and current is not None and run.id == current.id
    if replacing:
        echo(f"Stopping the active run {name}; the new run starts once it has stopped.")
    verb = "updated" if decision == "update" else "submitted"
    if args.detach:
        echo(f"Run {run.run_spec.run_name} {verb}, detaching...")
        return 0
    if replacing:
        _wait_replaced(api, run)
    from dstack.cli.attach_run import attach

    return attach(api, run.run_spec.run_name or "", yes=args.yes, args=args)


def _warn_scaling(configuration: dict[str, Any]) -> None:
    from dstack.models.services import scaling_has_no_effect

    if scaling_has_no_effect(configuration):
        out(
            "`scaling` has no effect while `replicas` is 1: set `replicas` to a range "
            "(e.g. `replicas: 1..4`) to autoscale",
            style="warning",
        )


def _check_local_ports(configuration: dict[str, Any], host: str | None) -> None:
    """Before submitting an attached run, a mapping to another local port (`8080:80`) must find
    that port free (cli.md §2 step 7). A port forwarded to itself may be the job's own port on
    the local backend, so it is checked when attaching, where the backend is known."""
    from dstack.cli.tunnel import plan_forwards

    specs = [
        {"port": p["container_port"], "map_to_port": p.get("local_port")}
        for p in configuration.get("ports") or []
        if isinstance(p, dict) and p.get("container_port")
    ]
    plan_forwards(specs, [], same_network=True, host=host or "localhost", action="submit")


def _ssh_key_pub(args: argparse.Namespace) -> str | None:
    """The user's public key travels with the run: the job's SSH server authorizes it."""
    from dstack.cli.sshconfig import user_key

    try:
        return user_key(getattr(args, "ssh_identity", None))[1]
    except CLIError:
        if getattr(args, "ssh_identity", None):
            raise
        return None  # no OpenSSH here: the run still runs, only `ssh <run>` will not


def _get_plan(api: APIClient, spec: RunSpec, max_offers: int) -> RunPlan:
    from dstack.cli.progress import StatusReporter

    reporter = StatusReporter("Getting apply plan...")
    if not reporter.tty:
        return api.get_run_plan(spec, max_offers)
    with reporter:
        return api.get_run_plan(spec, max_offers)


def print_plan(
    plan: RunPlan, verbose: bool, max_offers: int, has_fleets: Any = lambda: True
) -> None:
    from dstack.cli.render.offers import (
        NO_FLEETS,
        NO_OFFERS,
        offers_footer,
        offers_table,
    )
    from dstack.cli.render.plan import plan_properties
    from dstack.cli.render.tables import properties_table

    out(properties_table(plan_properties(plan, verbose)))
    out()
    job_plan = plan.job_plans[0] if plan.job_plans else None
    offers = job_plan.offers[:max_offers] if job_plan else []
    total = job_plan.total_offers if job_plan else 0
    if offers:
        out(offers_table(offers, total, dim_rest=True))
        prices = [o.price for o in job_plan.offers]
        max_price = job_plan.max_price if job_plan.max_price is not None else max(prices)
        footer = offers_footer(len(offers), total, max_price)
        if footer:
            out(footer, style="secondary")
    else:
        message = NO_OFFERS if has_fleets() else NO_FLEETS
        out(message, style="warning")
        for note in job_plan.notes if job_plan else []:
            out(f"  - {note}", style="warning")
    for warning in job_plan.warnings if job_plan else []:
        out(f"Warning: {warning}", style="warning")
    out()


def _has_fleets(api: APIClient) -> bool:
    """Only asked when there are no offers, to pick the more helpful of the two messages."""
    from dstack.errors import ClientError

    try:
        return bool(api.list_fleets_raw())
    except ClientError:
        return True


def configuration_changes(new: Any, current: Any, prefix: str = "") -> list[str]:
    """Top-level keys whose values differ; a `None` in the new value matches anything,
    because the server fills in defaults in the configuration it stores."""
    if new is None:
        return []
    if isinstance(new, dict) and isinstance(current, dict):
        changed = []
        for key, value in new.items():
            if configuration_changes(value, current.get(key), key):
                changed.append(prefix or key)
        return sorted(set(changed))
    return [] if new == current else [prefix or "configuration"]


def _changes(spec: RunSpec, current: Run) -> list[str]:
    lines = []
    conf_changes = configuration_changes(spec.configuration, current.run_spec.configuration)
    if conf_changes:
        lines.append("- Configuration properties:")
        lines.extend(f"  - {key}" for key in conf_changes)
    if (spec.repo_code_hash or None) != (current.run_spec.repo_code_hash or None):
        lines.append("- Repo files")
    return lines


def _decide_active(spec: RunSpec, current: Run, args: argparse.Namespace) -> str | None:
    """Which action against an active run of the same name; None means exit 0.

    A running service updates in place (the server rolls its replicas to the new spec); any
    other change means "stop and override" (cli.md §2 step 5).
    """
    name = current.run_spec.run_name
    changes = _changes(spec, current)
    if not changes:
        echo(f"Active run {name} already exists. Detected no changes.")
        if args.yes and not args.force:
            echo("Use --force to apply anyway.")
            return None
    elif _in_place(spec, current):
        echo(f"Active run {name} already exists. Detected changes that can be updated in-place:")
        echo("\n".join(changes))
        if not args.yes and not confirm("Update the run?"):
            echo("Exiting...")
            return None
        return "update"
    else:
        echo(f"Active run {name} already exists. Detected changes that cannot be updated"
             " in-place:")
        echo("\n".join(changes))
    if not args.yes and not confirm("Stop and override the run?"):
        echo("Exiting...")
        return None
    return "override"


def _in_place(spec: RunSpec, current: Run) -> bool:
    """A service updates in place; so does any run whose only change is `priority`."""
    if configuration_changes(spec.configuration, current.run_spec.configuration) == [
        "priority"
    ] and (spec.repo_code_hash or None) == (current.run_spec.repo_code_hash or None):
        return True
    return (
        spec.configuration.get("type") == "service"
        and current.run_spec.configuration.get("type") == "service"
        and current.status != RunStatus.TERMINATING
    )


def _wait_replaced(api: APIClient, old: Run) -> None:
    """Show the old run stopping until the server has submitted its replacement (the latest
    run of the name is then another one). The server submits it in the same transaction that
    finishes the old run, so an old run found finished and still the latest means the
    replacement was cancelled (`dstack stop NAME` does that)."""
    from dstack.cli.progress import StatusReporter
    from dstack.cli.runs import Backoff, status_text

    name = old.run_spec.run_name or ""
    backoff = Backoff()
    seen = None
    with StatusReporter(f"Stopping {name}...") as reporter:
        while True:
            run = api.get_run(name)
            if run.id != old.id:
                return
            if run.status.is_finished():
                raise CLIError(
                    f"Run {name} stopped ({status_text(run)}) but its replacement was cancelled"
                )
            text = status_text(run)
            if text != seen:
                reporter.update(f"{name}: {text}")
                seen = text
                backoff.reset()
            backoff.sleep()


def _submit(api: APIClient, spec: RunSpec, current: Run | None, force: bool = False) -> Run:
    """One `runs/apply` call. `force` with no `current` asks the server to replace an active
    run of the same name (it answers with that run, now stopping) or to submit at once when
    there is none."""
    from dstack.cli.progress import StatusReporter

    reporter = StatusReporter("Applying plan...")
    if not reporter.tty:
        return api.apply_run_plan(spec, current, force=force)
    with reporter:
        return api.apply_run_plan(spec, current, force=force)
