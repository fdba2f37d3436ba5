"""`dstack offer`: the instance offers matching resource requirements, listed cheapest first
or grouped per GPU (`--group-by`)."""

from __future__ import annotations

import argparse
from typing import Any

from dstack.cli.apply_overrides import add_profile_flags, add_resource_flags
from dstack.cli.common import CLIError, add_json_args, add_project_arg

EPILOG = """examples:
  dstack offer                       everything the backends offer
  dstack offer --gpu A100            machines with A100 GPUs
  dstack offer --backend aws --gpu 24GB.. --max-offers 10
  dstack offer --spot --region us-east-1 --max-price 2
  dstack offer --gpu 1.. --group-by gpu,backend,region
  dstack offer --json
"""

GROUP_BY = ("gpu", "backend", "region", "count")
# Flags shared with `dstack apply` that change how a run behaves, never which offers exist:
# refused here rather than accepted and ignored.
NOT_FOR_OFFERS = {
    "max_duration": "--max-duration",
    "dont_destroy": "--dont-destroy",
    "idle_duration": "--idle-duration",
    "retry": "--retry/--no-retry",
    "retry_duration": "--retry-duration",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_project_arg(parser)
    add_json_args(parser)
    parser.add_argument("--max-offers", type=int, default=50, metavar="N",
                        help="how many offers to show (default 50)")
    parser.add_argument("--group-by", action="append", default=[], metavar="GROUP_BY",
                        help="group GPU offers by gpu, backend, region, count (repeatable or "
                        "comma-separated; must include gpu; region needs backend)")
    group = parser.add_argument_group("requirements")
    add_resource_flags(group)
    add_profile_flags(group)
    parser.set_defaults(handler=run)


def parse_group_by(values: list[str]) -> list[str]:
    """`--group-by gpu,backend --group-by region` -> ["gpu", "backend", "region"]."""
    out: list[str] = []
    for value in values:
        for item in (v.strip().lower() for v in value.split(",")):
            if not item:
                continue
            if item not in GROUP_BY:
                raise CLIError(f"Cannot group by '{item}': use {', '.join(GROUP_BY)}")
            if item not in out:
                out.append(item)
    if not out:
        return out
    for item in out:
        if item != "gpu" and "gpu" not in out:
            raise CLIError(f"Cannot group by '{item}' without also grouping by 'gpu'")
    if "region" in out and "backend" not in out:
        raise CLIError("Cannot group by 'region' without also grouping by 'backend'")
    return out


def offer_configuration(args: argparse.Namespace) -> dict:
    """An unconstrained task (`cpu=1.. mem=0GB..`, GPU optional, spot or on-demand) narrowed by
    the profile and the flags."""
    from dstack.cli.apply_overrides import apply_overrides, apply_profile, check_exclusive
    from dstack.cli.profiles import selected_profile
    from dstack.models.configurations import parse_configuration

    check_exclusive(args)
    for attr, flag in NOT_FOR_OFFERS.items():
        if getattr(args, attr, None) not in (None, False):
            raise CLIError(f"{flag} sets how a run behaves, not which offers exist: "
                           "`dstack offer` does not take it")
    base: dict[str, Any] = {
        "type": "task",
        "commands": [":"],
        "resources": {"cpu": "1..", "memory": "0GB..", "gpu": "0.."},
    }
    data = apply_overrides(apply_profile(base, selected_profile(args)), args, {})
    if not data.get("spot_policy"):
        data["spot_policy"] = "auto"  # both kinds are listed unless asked otherwise
    return parse_configuration(data).model_dump(mode="json")


def _requirements(conf: dict) -> dict:
    return {
        "resources": conf.get("resources"),
        "max_price": conf.get("max_price"),
        "spot": {"spot": True, "on-demand": False}.get(conf.get("spot_policy") or "auto"),
        "reservation": conf.get("reservation"),
    }


def _header(api: Any, conf: dict) -> list[tuple[str, str]]:
    from dstack.cli.render.plan import resources_text

    max_price = conf.get("max_price")
    return [
        ("Project", api.project or ""),
        ("Resources", resources_text({}, conf)),
        ("Spot policy", conf.get("spot_policy") or "auto"),
        ("Max price", f"${max_price:g}" if max_price else "off"),
    ]


def _notes(notes: list[str], style: str = "warning") -> None:
    """Why a backend offered nothing (no catalog, not for this project)."""
    from dstack.cli.common import out

    for note in notes:
        out(note, style=style)


def run(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client
    from dstack.models.runs import RunSpec

    group_by = parse_group_by(args.group_by)
    conf = offer_configuration(args)
    api = api_client(args)
    spec = RunSpec(configuration=conf)
    if group_by:
        return run_grouped(args, api, spec, conf, group_by)
    return run_plain(args, api, spec, conf)


def run_plain(args: argparse.Namespace, api: Any, spec: Any, conf: dict) -> int:
    from dstack.cli.common import out, print_json
    from dstack.cli.render.offers import NO_OFFERS, offers_footer, offers_table
    from dstack.cli.render.tables import properties_table

    answer = api.list_offers(spec, args.max_offers)
    offers, total = answer["offers"], answer["total_offers"]
    if args.format == "json":
        print_json({
            "project": api.project,
            "user": api.get_my_user().username,
            "requirements": _requirements(conf),
            "offers": [o.model_dump(mode="json") for o in offers],
            "total_offers": total,
        })
        return 0
    out(properties_table(_header(api, conf)))
    out()
    if not offers:
        out(NO_OFFERS, style="warning")
        _notes(answer["notes"])
        return 0
    shown = offers[: args.max_offers]
    out(offers_table(shown, total, dim_rest=False))
    footer = offers_footer(len(shown), total, max(o.price for o in offers))
    if footer:
        out(footer, style="secondary")
    if not args.fleets:
        out("These are the offers of the configured backends, without any fleet's limits; "
            "pass --fleet NAME to see what a run in that fleet would get.", style="secondary")
    _notes(answer["notes"], style="secondary")
    return 0


def run_grouped(
    args: argparse.Namespace, api: Any, spec: Any, conf: dict, group_by: list[str]
) -> int:
    from dstack.cli.common import out, print_json
    from dstack.cli.render.offers import NO_OFFERS, gpu_groups_table
    from dstack.cli.render.tables import properties_table

    answer = api.list_gpus(spec, [g for g in group_by if g != "gpu"])
    groups = answer["gpus"]
    if args.format == "json":
        print_json({
            "project": api.project,
            "requirements": _requirements(conf),
            "group_by": group_by,
            "gpus": [g.model_dump(mode="json") for g in groups],
        })
        return 0
    reservation = conf.get("reservation")
    out(properties_table([
        *_header(api, conf),
        ("Reservation", reservation or "no"),
        ("Group by", ", ".join(group_by)),
    ]))
    out()
    if not groups:
        out(NO_OFFERS, style="warning")
        _notes(answer["notes"])
        return 0
    out(gpu_groups_table(groups, group_by))
    _notes(answer["notes"], style="secondary")
    return 0
