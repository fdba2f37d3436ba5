"""`dstack secret`: list, get, set and delete a project's secrets (cli.md §13).

`set NAME` without VALUE reads the value from stdin (a pipe) or a hidden prompt, so it stays out
of the shell history and of `ps`. Only project managers and admins may read or change values;
any member lists the names."""

from __future__ import annotations

import argparse
import sys

COLUMNS = ["NAME", "VALUE"]
MASK = "******"


def configure(parser: argparse.ArgumentParser) -> None:
    from dstack.cli.common import add_project_arg

    add_project_arg(parser)
    parser.set_defaults(handler=_list)
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    lst = sub.add_parser("list", help="list secrets (names only)", description="List secrets")
    add_project_arg(lst, sub=True)
    lst.set_defaults(handler=_list)
    get = sub.add_parser("get", help="show a secret's value", description="Show a secret")
    add_project_arg(get, sub=True)
    get.add_argument("name")
    get.set_defaults(handler=_get)
    put = sub.add_parser(
        "set",
        help="create or update a secret",
        description="Create or update a secret. Without VALUE, the value is read from stdin "
        "(a pipe) or a hidden prompt, and stays out of the shell history.",
    )
    add_project_arg(put, sub=True)
    put.add_argument("name")
    put.add_argument("value", nargs="?", help="the value (omit it to read stdin or a prompt)")
    put.set_defaults(handler=_set)
    delete = sub.add_parser("delete", help="delete a secret", description="Delete a secret")
    add_project_arg(delete, sub=True)
    delete.add_argument("name")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=_delete)


def _list(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, out
    from dstack.cli.render.tables import make_table

    secrets = api_client(args).list_secrets()
    out(make_table(COLUMNS, [[s.name, MASK] for s in secrets]))
    return 0


def _get(args: argparse.Namespace) -> int:
    from dstack.api.client import ServerError
    from dstack.cli.common import CLIError, api_client, out
    from dstack.cli.render.tables import make_table
    from dstack.cli.runs import is_not_found

    try:
        secret = api_client(args).get_secret(args.name)
    except ServerError as e:
        if is_not_found(e):
            raise CLIError("Resource not found") from e
        raise
    out(make_table(COLUMNS, [[secret.name, secret.value or ""]]))
    return 0


def read_value(given: str | None) -> str:
    """VALUE as given; else all of stdin when it is a pipe (one trailing newline dropped, as
    `echo` adds one); else a hidden prompt."""
    if given is not None:
        return given
    if not sys.stdin.isatty():
        text = sys.stdin.read()
        return text[:-1] if text.endswith("\n") else text
    import getpass

    return getpass.getpass("Value: ")


def _set(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError, api_client, echo

    value = read_value(args.value)
    if value == "":
        raise CLIError(f"No value given for secret {args.name}")
    api_client(args).set_secret(args.name, value)
    echo("OK")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from dstack.api.client import ServerError
    from dstack.cli.common import CLIError, api_client, confirm, echo
    from dstack.cli.runs import is_not_found

    if not args.yes and not confirm(f"Delete the secret {args.name}?"):
        echo("Exiting...")
        return 0
    try:
        api_client(args).delete_secrets([args.name])
    except ServerError as e:
        if is_not_found(e):
            raise CLIError("Resource not found") from e
        raise
    echo("OK")
    return 0
