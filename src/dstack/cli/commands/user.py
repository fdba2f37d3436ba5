"""`dstack user`: the server's users, for its global admin (docs/teams.md). The server and the
admin's token are those of the configured project chosen with `--project` (the default one
otherwise). A token is printed once, by `create` and `refresh-token`; the server keeps only
its hash."""

from __future__ import annotations

import argparse

from dstack.cli.common import add_project_arg

EPILOG = """examples:
  dstack user create alice              a user; prints the token to give to alice
  dstack user create ops --admin        a global admin
  dstack user update alice --deactivate refused everywhere at once (API, services, SSH)
  dstack user refresh-token alice       a new token; the old one stops working
  dstack user delete alice"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_project_arg(parser)
    parser.set_defaults(handler=_list)
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")

    def cmd(name: str, help_: str, handler) -> argparse.ArgumentParser:  # noqa: ANN001
        p = sub.add_parser(name, help=help_, description=help_[:1].upper() + help_[1:])
        add_project_arg(p, sub=True)
        p.set_defaults(handler=handler)
        return p

    cmd("list", "list the server's users (global admin)", _list)
    cmd("get", "show a user", _get).add_argument("username")
    create = cmd("create", "create a user and print its token (shown once)", _create)
    create.add_argument("username", help="letters, digits, - and _, at most 50")
    create.add_argument("--admin", action="store_true", help="a global admin (default: user)")
    create.add_argument("--email")
    update = cmd("update", "change a user's role, e-mail, or activate/deactivate it", _update)
    update.add_argument("username")
    update.add_argument("--role", choices=["admin", "user"], help="the global role")
    update.add_argument("--email", help="the e-mail address ('' clears it)")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--activate", action="store_true", help="let the user in again")
    state.add_argument("--deactivate", action="store_true",
                       help="refuse the user's token everywhere, at once")  # fmt: skip
    cmd("refresh-token", "give a user a new token (the old one stops working)",
        _refresh).add_argument("username")  # fmt: skip
    delete = cmd("delete", "delete a user (their runs and events keep their history)", _delete)
    delete.add_argument("username")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def _table(users) -> str:  # noqa: ANN001
    from dstack.cli.render.tables import make_table

    rows = [[u.username, u.global_role, "yes" if u.active else "no", u.email or ""]
            for u in users]  # fmt: skip
    return make_table(["USERNAME", "ROLE", "ACTIVE", "EMAIL"], rows)


def _list(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, out

    with api_client(args) as api:
        out(_table(api.list_users()))
    return 0


def _get(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, out

    with api_client(args) as api:
        out(_table([api.get_user(args.username)]))
    return 0


def _print_token(user, what: str) -> None:  # noqa: ANN001
    from dstack.cli.common import echo

    echo(f"{what} Its token (shown only now): {user.creds.token if user.creds else '(none)'}")
    echo("The user adds it with: dstack project add --name PROJECT --url URL --token TOKEN")


def _create(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client

    role = "admin" if args.admin else "user"
    with api_client(args) as api:
        user = api.create_user(args.username, role, args.email)
    _print_token(user, f"User {user.username} created ({role}).")
    return 0


def _update(args: argparse.Namespace) -> int:
    from dstack.cli.common import CLIError, api_client, out

    fields: dict = {}
    if args.role:
        fields["global_role"] = args.role
    if args.email is not None:
        fields["email"] = args.email
    if args.activate or args.deactivate:
        fields["active"] = bool(args.activate)
    if not fields:
        raise CLIError("Nothing to change: give --role, --email, --activate or --deactivate")
    with api_client(args) as api:
        out(_table([api.update_user(args.username, **fields)]))
    return 0


def _refresh(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client

    with api_client(args) as api:
        user = api.refresh_token(args.username)
    _print_token(user, f"User {user.username} has a new token; the old one no longer works.")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, confirm, echo

    if not args.yes and not confirm(f"Delete the user {args.username}?"):
        return 0
    with api_client(args) as api:
        api.delete_users([args.username])
    echo("OK")
    return 0
