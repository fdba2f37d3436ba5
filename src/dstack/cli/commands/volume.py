"""`dstack volume`: list, inspect and delete volumes (cli.md §11).

A directory volume (`fleet:`) shows `fleet NAME` where a network volume shows its backend.
A refused delete (the volume is attached, its host is gone) prints the server's reason and
exits 1."""

from __future__ import annotations

import argparse

from dstack.cli.common import add_project_arg

COLUMNS = ["NAME", "BACKEND", "STATUS", "CREATED"]
VERBOSE_COLUMNS = ["NAME", "BACKEND", "REGION", "STATUS", "ATTACHED", "CREATED", "ERROR"]


def configure(parser: argparse.ArgumentParser) -> None:
    add_project_arg(parser)
    _flags(parser)
    parser.set_defaults(handler=_list)
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    lst = sub.add_parser("list", help="list volumes", description="List volumes")
    add_project_arg(lst, sub=True)
    _flags(lst, sub=True)
    lst.set_defaults(handler=_list)
    get = sub.add_parser("get", help="show a volume as JSON", description="Show a volume")
    add_project_arg(get, sub=True)
    get.add_argument("name")
    get.add_argument("--json", action="store_true", help="output JSON")
    get.set_defaults(handler=_get)
    delete = sub.add_parser("delete", help="delete a volume", description="Delete a volume")
    add_project_arg(delete, sub=True)
    delete.add_argument("name")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.add_argument(
        "--force", action="store_true",
        help="forget a directory volume whose host is gone; end a detach stuck past its timeout",
    )  # fmt: skip
    delete.set_defaults(handler=_delete)


def _flags(parser: argparse.ArgumentParser, sub: bool = False) -> None:
    default = argparse.SUPPRESS if sub else False
    parser.add_argument("-w", "--watch", action="store_true", default=default,
                        help="refresh every 2 seconds")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show more columns")
    parser.add_argument("--json", action="store_true", default=default,
                        help="output the volumes as JSON")


def volume_row(volume, verbose: bool) -> list[str]:  # noqa: ANN001
    from dstack.cli.render.format import backend_cell, pretty_date

    conf = volume.configuration
    pd = volume.provisioning_data or {}
    region = pd.get("region") or conf.get("region") or ""
    status = "deleting" if volume.to_be_deleted else volume.status
    if conf.get("fleet"):
        backend = plain = f"fleet {conf['fleet']}"
    else:
        backend, plain = backend_cell(conf.get("backend"), region), conf.get("backend") or ""
    if not verbose:
        return [volume.name, backend, status, pretty_date(volume.created_at)]
    az = pd.get("availability_zone")
    region_text = f"{region} ({az})" if az else region
    live = [a for a in (volume.attachments or []) if a.get("status") != "detached"]
    attached = sorted({(a.get("instance") or {}).get("fleet_name") or "" for a in live} - {""})
    return [volume.name, plain, region_text, status, ", ".join(attached) or "-",
            pretty_date(volume.created_at), volume.status_message or ""]


def _table(api, verbose: bool):  # noqa: ANN001, ANN202
    from dstack.cli.render.tables import make_table

    volumes = api.list_volumes()
    return make_table(VERBOSE_COLUMNS if verbose else COLUMNS,
                      [volume_row(v, verbose) for v in volumes])


def _list(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, out

    api = api_client(args)
    if args.json:
        from dstack.cli.common import print_json

        print_json(api.list_volumes_raw(), indent=2)
        return 0
    if not args.watch:
        out(_table(api, args.verbose))
        return 0
    import time

    from rich.live import Live

    from dstack.cli.common import console

    try:
        with Live(_table(api, args.verbose), console=console(), auto_refresh=False) as live:
            while True:
                time.sleep(2)
                live.update(_table(api, args.verbose), refresh=True)
    except KeyboardInterrupt:
        return 0


def _lookup(api, name: str) -> dict:  # noqa: ANN001
    from dstack.api.client import ServerError
    from dstack.cli.common import CLIError
    from dstack.cli.runs import is_not_found

    try:
        return api.get_volume_raw(name)
    except ServerError as e:
        if is_not_found(e):
            raise CLIError(f"Volume {name} does not exist") from e
        raise


def _get(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, out, print_json

    raw = _lookup(api_client(args), args.name)
    if args.json:
        print_json(raw, indent=2)
        return 0
    from dstack.cli.render.tables import make_table, properties_table
    from dstack.models.volumes import Volume

    volume = Volume.model_validate(raw)
    out(properties_table(zip(VERBOSE_COLUMNS, volume_row(volume, True), strict=True)))
    rows = [[(a.get("instance") or {}).get("name") or "", (a.get("job") or {}).get("name") or "",
             a.get("status") or "", a.get("message") or ""]
            for a in volume.attachments or []]  # fmt: skip
    if rows:
        out()
        out(make_table(["INSTANCE", "JOB", "ATTACHMENT", "MESSAGE"], rows))
    return 0


def _delete(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError, api_client, confirm, echo

    api = api_client(args)
    names = {v.get("name") for v in api.list_volumes_raw()}
    if args.name not in names:
        raise CLIError(f"Volume {args.name} does not exist")
    if not args.yes and not confirm(f"Delete the volume {args.name}?"):
        echo("Exiting...")
        return 0
    api.delete_volumes([args.name], force=args.force)
    echo(f"Volume {args.name} deleted")
    return 0
