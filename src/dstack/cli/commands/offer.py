"""`dstack offer`: the instance offers matching resource requirements."""

from __future__ import annotations

import argparse

from dstack.cli.apply_overrides import add_profile_flags, add_resource_flags
from dstack.cli.common import add_json_args, add_project_arg

EPILOG = """examples:
  dstack offer                       everything the backends offer
  dstack offer --gpu A100            machines with A100 GPUs
  dstack offer --backend aws --gpu 24GB.. --max-offers 10
  dstack offer --json
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_project_arg(parser)
    add_json_args(parser)
    parser.add_argument("--max-offers", type=int, default=50, metavar="N",
                        help="how many offers to show (default 50)")
    group = parser.add_argument_group("requirements")
    add_resource_flags(group)
    add_profile_flags(group)
    parser.set_defaults(handler=run)


def offer_configuration(args: argparse.Namespace) -> dict:
    """An unconstrained task (`cpu=1.. mem=0GB..`, GPU optional) narrowed by the flags."""
    from dstack.cli.apply_overrides import apply_overrides, check_exclusive
    from dstack.models.configurations import parse_configuration

    check_exclusive(args)
    base = {
        "type": "task",
        "commands": [":"],
        "resources": {"cpu": "1..", "memory": "0GB..", "gpu": "0.."},
    }
    data = apply_overrides(base, args, {})
    return parse_configuration(data).model_dump(mode="json")


def run(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, out, print_json
    from dstack.cli.render.offers import NO_OFFERS, offers_footer, offers_table
    from dstack.cli.render.plan import resources_text, spot_text
    from dstack.cli.render.tables import properties_table
    from dstack.models.runs import RunSpec

    conf = offer_configuration(args)
    api = api_client(args)
    spec = RunSpec(configuration=conf)
    answer = api.list_offers(spec, args.max_offers)
    offers, total = answer["offers"], answer["total_offers"]
    if args.format == "json":
        requirements = {
            "resources": conf.get("resources"),
            "max_price": conf.get("max_price"),
            "spot": {"spot": True, "on-demand": False}.get(conf.get("spot_policy") or "auto"),
            "reservation": conf.get("reservation"),
        }
        print_json({
            "project": api.project,
            "user": api.get_my_user().username,
            "requirements": requirements,
            "offers": [o.model_dump(mode="json") for o in offers],
            "total_offers": total,
        })
        return 0
    max_price = conf.get("max_price")
    out(properties_table([
        ("Project", api.project or ""),
        ("Resources", resources_text({}, conf)),
        ("Spot policy", spot_text({}, conf) if conf.get("spot_policy") else "auto"),
        ("Max price", f"${max_price:g}" if max_price else "off"),
    ]))
    out()
    if not offers:
        out(NO_OFFERS, style="warning")
        return 0
    shown = offers[: args.max_offers]
    out(offers_table(shown, total, dim_rest=False))
    footer = offers_footer(len(shown), total, max(o.price for o in offers))
    if footer:
        out(footer, style="secondary")
    if not args.fleets:
        out("Existing fleets are ignored here; pass --fleet to see offers from a fleet.",
            style="secondary")
    return 0
