"""`dstack project`: the server projects this client knows (`~/.dstack/config.yml`)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="also show the user")
    parser.set_defaults(handler=_list)
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    add = sub.add_parser("add", help="add or update a project",
                         description="Add or update a project (checked against the server)")
    add.add_argument("--name", required=True, help="the project name")
    add.add_argument("--url", required=True, help="the server URL")
    add.add_argument("--token", required=True, help="your user token")
    add.add_argument("-y", "--yes", action="store_true", help="make it the default project")
    add.add_argument("-n", "--no", action="store_true", help="do not make it the default")
    add.set_defaults(handler=_add)
    lst = sub.add_parser("list", help="list projects", description="List projects")
    lst.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="also show the user")
    lst.set_defaults(handler=_list)
    default = sub.add_parser("set-default", help="set the default project",
                             description="Set the default project")
    default.add_argument("name")
    default.set_defaults(handler=_set_default)
    delete = sub.add_parser("delete", help="forget a project", description="Forget a project")
    delete.add_argument("--name", required=True)
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=_delete)


def _add(args: argparse.Namespace) -> int:
    from dstack.api.client import APIClient, ServerError
    from dstack.cli.common import CLIError, confirm, echo
    from dstack.client_config import add_project, load_projects
    from dstack.errors import ClientError

    api = APIClient(args.url, args.token, args.name)
    try:
        api.get_project(args.name)
    except ServerError as e:
        raise CLIError(f"Project '{args.name}' not found.") from e
    except ClientError as e:
        if e.status_code == 403:
            raise CLIError("Forbidden. Ensure the token is valid.") from e
        if e.status_code == 404:
            raise CLIError(f"Project '{args.name}' not found.") from e
        raise
    has_default = any(p.default for p in load_projects())
    if not has_default or args.yes:
        make_default = True
    elif args.no:
        make_default = False
    else:
        make_default = confirm(f"Set '{args.name}' as your default project?")
    path = add_project(args.name, args.url, args.token, default=make_default)
    echo(f"Configuration updated at {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from dstack.cli.common import out
    from dstack.cli.render.tables import make_table
    from dstack.client_config import load_projects

    rows = []
    for p in load_projects():
        row = [p.name, p.url]
        if args.verbose:
            row.append(_user(p))
        row.append("✓" if p.default else "")
        rows.append(row)
    cols = ["PROJECT", "URL", *(["USER"] if args.verbose else []), "DEFAULT"]
    out(make_table(cols, rows))
    return 0


def _user(p) -> str:  # noqa: ANN001
    from dstack.api.client import APIClient
    from dstack.errors import ClientError

    try:
        with APIClient(p.url, p.token, p.name, retry_delay=0.2) as api:
            return api.get_my_user().username
    except ClientError:
        return "(invalid token)"


def _set_default(args: argparse.Namespace) -> int:
    from dstack.cli.common import echo
    from dstack.client_config import set_default_project

    set_default_project(args.name)
    echo("OK")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError, confirm, echo
    from dstack.client_config import delete_project, load_projects

    if not any(p.name == args.name for p in load_projects()):
        raise CLIError(f"Project '{args.name}' not found")
    if not args.yes and not confirm(f"Are you sure you want to delete project '{args.name}'?"):
        return 0
    delete_project(args.name)
    echo("OK")
    return 0
