"""`dstack gateway`: list, inspect and delete gateways."""

from __future__ import annotations

import argparse

from dstack.cli.common import add_json_args, add_project_arg

COLUMNS = ["NAME", "BACKEND", "HOSTNAME", "DOMAIN", "DEFAULT", "STATUS"]
VERBOSE_COLUMNS = [*COLUMNS, "CREATED", "ERROR"]


def configure(parser: argparse.ArgumentParser) -> None:
    add_project_arg(parser)
    parser.add_argument("-w", "--watch", action="store_true", help="refresh every 2 seconds")
    parser.add_argument("-v", "--verbose", action="store_true", help="show more columns")
    add_json_args(parser)
    parser.set_defaults(handler=_list)
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    lst = sub.add_parser("list", help="list gateways", description="List gateways")
    add_project_arg(lst, sub=True)
    lst.set_defaults(handler=_list)
    get = sub.add_parser("get", help="show a gateway as JSON", description="Show a gateway")
    add_project_arg(get, sub=True)
    get.add_argument("name")
    get.add_argument("--json", action="store_true", required=True, help="output JSON")
    get.set_defaults(handler=_get)
    delete = sub.add_parser("delete", help="delete a gateway", description="Delete a gateway")
    add_project_arg(delete, sub=True)
    delete.add_argument("name")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=_delete)


def gateway_row(gw, verbose: bool) -> list[str]:  # noqa: ANN001
    from dstack.cli.render.format import backend_cell, pretty_date

    row = [gw.name, backend_cell(gw.backend or gw.configuration.get("backend"),
                                 gw.region or gw.configuration.get("region")),
           gw.hostname or gw.ip_address or "", gw.wildcard_domain or "",
           "✓" if gw.default else "", gw.status]
    if verbose:
        row += [pretty_date(gw.created_at), gw.status_message or ""]
    return row


def _table(gateways: list, verbose: bool):  # noqa: ANN202
    from dstack.cli.render.tables import make_table

    return make_table(VERBOSE_COLUMNS if verbose else COLUMNS,
                      [gateway_row(g, verbose) for g in gateways])


def _list(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError, api_client, out, print_json

    api = api_client(args)
    if args.format == "json":
        if args.watch:
            raise CLIError("JSON output is not supported together with --watch")
        print_json({"project": api.project, "gateways": api.list_gateways_raw()})
        return 0
    if not args.watch:
        out(_table(api.list_gateways(), args.verbose))
        return 0
    import time

    from rich.live import Live

    from dstack.cli.common import console

    try:
        with Live(_table(api.list_gateways(), args.verbose), console=console(),
                  auto_refresh=False) as live:
            while True:
                time.sleep(2)
                live.update(_table(api.list_gateways(), args.verbose), refresh=True)
    except KeyboardInterrupt:
        return 0


def _get(args: argparse.Namespace) -> int:
    from dstack.api.client import ServerError
    from dstack.cli.common import CLIError, api_client, print_json

    try:
        raw = api_client(args).get_gateway_raw(args.name)
    except ServerError as e:
        raise CLIError("Resource not found") from e
    print_json(raw, indent=2)
    return 0


def _delete(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError, api_client, confirm, echo, out

    api = api_client(args)
    gateways = [g for g in api.list_gateways() if g.name == args.name]
    if not gateways:
        raise CLIError("Resource not found")
    out(_table(gateways, False))
    if not args.yes and not confirm("Do you want to delete the gateway?"):
        echo("Exiting...")
        return 0
    api.delete_gateways([args.name])
    echo("Gateway deleted")
    return 0
