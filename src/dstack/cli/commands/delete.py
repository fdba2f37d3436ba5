"""`dstack delete` (alias `destroy`): delete what a configuration file describes."""

from __future__ import annotations

import argparse

from dstack.cli.common import add_project_arg

KIND = {"dev-environment": "run", "task": "run", "service": "run", "fleet": "fleet",
        "volume": "volume", "gateway": "gateway"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "example:\n  dstack delete -f fleet.dstack.yml -y\n"
    add_project_arg(parser)
    parser.add_argument("-f", "--file", metavar="FILE", help="the configuration file")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(handler=run)


def _exists(api, kind: str, name: str) -> bool:  # noqa: ANN001
    from dstack.api.client import ServerError
    from dstack.cli.runs import find_run, is_not_found

    if kind == "run":
        return find_run(api, name) is not None
    if kind == "volume":
        return any(v.get("name") == name for v in api.list_volumes_raw())
    if kind == "gateway":
        return any(g.get("name") == name for g in api.list_gateways_raw())
    try:
        api.get_fleet_raw(name)
        return True
    except ServerError as e:
        if is_not_found(e):
            return False
        raise


def run(args: argparse.Namespace) -> int:
    import time

    from dstack.cli.commands.apply import config_file, load
    from dstack.cli.common import CLIError, api_client, confirm, echo

    conf = load(config_file(args.file), True)
    kind = KIND[conf.type]
    name = conf.name
    if not name:
        raise CLIError(f"Configuration specifies no {kind} to delete")
    api = api_client(args)
    if not _exists(api, kind, name):
        raise CLIError(f"{kind.capitalize()} {name} does not exist")
    if not args.yes and not confirm(f"Delete the {kind} {name}?"):
        echo("Exiting...")
        return 0
    if kind == "run":
        api.delete_runs([name])
    elif kind == "fleet":
        api.delete_fleets([name])
        while _exists(api, kind, name):
            time.sleep(1)
    elif kind == "volume":
        api.delete_volumes([name])
    else:
        api.delete_gateways([name])
    echo(f"{kind.capitalize()} {name} deleted")
    return 0
