"""`dstack fleet`: list, inspect and delete fleets."""

from __future__ import annotations

import argparse

from dstack.cli.common import add_project_arg


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples:\n  dstack fleet\n  dstack fleet get my-fleet --json\n"
        "  dstack fleet delete my-fleet -y\n  dstack fleet delete my-fleet -i 1 -y\n"
    )
    add_project_arg(parser)
    _list_flags(parser)
    parser.set_defaults(handler=_list)
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    lst = sub.add_parser("list", help="list fleets", description="List fleets")
    add_project_arg(lst, sub=True)
    _list_flags(lst, sub=True)
    lst.set_defaults(handler=_list)
    get = sub.add_parser("get", help="show a fleet", description="Show a fleet")
    add_project_arg(get, sub=True)
    get.add_argument("name", nargs="?", help="the fleet name")
    get.add_argument("--id", help="the fleet id (instead of the name)")
    get.add_argument("--json", action="store_true", help="print the fleet as JSON")
    get.set_defaults(handler=_get)
    delete = sub.add_parser("delete", help="delete a fleet or some of its instances",
                            description="Delete a fleet or some of its instances")
    add_project_arg(delete, sub=True)
    delete.add_argument("name", help="the fleet name")
    delete.add_argument("-i", "--instance", dest="instances", action="append", type=int,
                        metavar="N", help="delete only instance N (repeatable)")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=_delete)
    inst = sub.add_parser("delete-instance", help="delete one instance of a fleet",
                          description="Delete one instance of a fleet (same as delete NAME -i N)")
    add_project_arg(inst, sub=True)
    inst.add_argument("name", help="the fleet name")
    inst.add_argument("instance", help="the instance number, id or name")
    inst.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    inst.set_defaults(handler=_delete_instance)


def _list_flags(parser: argparse.ArgumentParser, sub: bool = False) -> None:
    default = argparse.SUPPRESS if sub else False
    parser.add_argument("-w", "--watch", action="store_true", default=default,
                        help="refresh every 2 seconds")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show more columns")


def _list(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, out
    from dstack.cli.render.fleets import fleets_table

    api = api_client(args)
    if not args.watch:
        out(fleets_table(api.list_fleets(), args.verbose))
        return 0
    import time

    from rich.live import Live

    from dstack.cli.common import console

    try:
        with Live(fleets_table(api.list_fleets(), args.verbose), console=console(),
                  auto_refresh=False) as live:
            while True:
                time.sleep(2)
                live.update(fleets_table(api.list_fleets(), args.verbose), refresh=True)
    except KeyboardInterrupt:
        return 0


def _fetch(api, name: str | None, fleet_id: str | None) -> dict:  # noqa: ANN001
    from dstack.api.client import ServerError
    from dstack.cli.common import CLIError
    from dstack.cli.runs import is_not_found

    if not name and not fleet_id:
        raise CLIError("Specify a fleet name or --id")
    try:
        return api.get_fleet_raw(name, fleet_id)
    except ServerError as e:
        if is_not_found(e):
            raise CLIError(f"Fleet {name or fleet_id} does not exist") from e
        raise


def _get(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, out, print_json

    api = api_client(args)
    raw = _fetch(api, args.name, args.id)
    if args.json:
        print_json(raw, indent=2)
        return 0
    from dstack.cli.render.fleets import fleets_table
    from dstack.models.fleets import Fleet

    out(fleets_table([Fleet.model_validate(raw)], verbose=True))
    return 0


def _delete(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, confirm, echo

    if "/" in args.name:
        from dstack.cli.common import CLIError

        raise CLIError("Deleting fleets of other projects (project/name) is not allowed")
    api = api_client(args)
    _fetch(api, args.name, None)
    if args.instances:
        nums = sorted(set(args.instances))
        listed = ", ".join(str(n) for n in nums)
        if not args.yes and not confirm(f"Delete the fleet {args.name} instances [{listed}]?"):
            echo("Exiting...")
            return 0
        api.delete_fleet_instances(args.name, nums)
        echo(f"Fleet {args.name} instances deleted")
        return 0
    if not args.yes and not confirm(f"Delete the fleet {args.name}?"):
        echo("Exiting...")
        return 0
    api.delete_fleets([args.name])
    echo(f"Fleet {args.name} deleted")
    return 0


def _delete_instance(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError, api_client

    if args.instance.isdigit():
        args.instances = [int(args.instance)]
        return _delete(args)
    raw = _fetch(api_client(args), args.name, None)
    for inst in raw.get("instances") or []:
        if args.instance in (inst.get("id"), inst.get("name")):
            args.instances = [int(inst.get("instance_num", 0))]
            return _delete(args)
    raise CLIError(f"Fleet {args.name} has no instance {args.instance}")
