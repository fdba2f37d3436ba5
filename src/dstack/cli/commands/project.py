"""`dstack project`: the server projects this client knows (`~/.dstack/config.yml`: `add`,
`list`, `set-default`, `delete` as in the original), and the projects on the server (`create`,
`update`, `destroy`, `members`, `add-member`, `remove-member`; docs/teams.md). The server
subcommands talk to the server of the configured project chosen with `--project`."""

from __future__ import annotations

import argparse

from dstack.cli.common import add_project_arg

EPILOG = """on the server (your token must have the role each needs, see docs/teams.md):
  dstack project create ml [--public]     you become its admin
  dstack project add-member ml bob --role manager   (roles: admin, manager, user)
  dstack project members ml
  dstack project remove-member ml bob     (any member may remove themself)
  dstack project update ml --public       any user may then see it and join as user
  dstack project destroy ml               delete it on the server (`delete` only forgets it
                                          in ~/.dstack/config.yml)"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="also show the user")
    parser.set_defaults(handler=_list)
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    add = sub.add_parser(
        "add",
        help="add or update a project",
        description="Add or update a project (checked against the server)",
    )
    add.add_argument("--name", required=True, help="the project name")
    add.add_argument("--url", required=True, help="the server URL")
    add.add_argument("--token", required=True, help="your user token")
    add.add_argument("-y", "--yes", action="store_true", help="make it the default project")
    add.add_argument("-n", "--no", action="store_true", help="do not make it the default")
    add.set_defaults(handler=_add)
    lst = sub.add_parser("list", help="list projects", description="List projects")
    lst.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="also show the user"
    )
    lst.set_defaults(handler=_list)
    default = sub.add_parser(
        "set-default", help="set the default project", description="Set the default project"
    )
    default.add_argument("name")
    default.set_defaults(handler=_set_default)
    delete = sub.add_parser("delete", help="forget a project", description="Forget a project")
    delete.add_argument("--name", required=True)
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=_delete)
    _configure_server(sub)
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _configure_server(sub) -> None:  # noqa: ANN001
    def cmd(name: str, help_: str, handler) -> argparse.ArgumentParser:  # noqa: ANN001
        p = sub.add_parser(name, help=help_, description=help_[:1].upper() + help_[1:])
        add_project_arg(p)
        p.add_argument("name", metavar="PROJECT", help="the project on the server")
        p.set_defaults(handler=handler)
        return p

    create = cmd("create", "create a project on the server (you become its admin)", _create)
    create.add_argument("--public", action="store_true",
                        help="any user may see it and join it as user")  # fmt: skip
    update = cmd("update", "make a project public or private (project admin)", _update)
    vis = update.add_mutually_exclusive_group(required=True)
    vis.add_argument("--public", action="store_true", help="any user may see and join it")
    vis.add_argument("--private", action="store_true", help="members only")
    destroy = cmd("destroy", "delete a project on the server (project admin)", _destroy)
    destroy.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    cmd("members", "list a project's members and their roles", _members)
    add = cmd("add-member", "add a member, or change a member's role (manager)", _add_member)
    add.add_argument("username")
    add.add_argument("--role", choices=["admin", "manager", "user"], default="user",
                     help="the project role (default: user; only admins grant admin)")  # fmt: skip
    rm = cmd("remove-member", "remove a member (manager; anyone may remove themself)",
             _remove_member)  # fmt: skip
    rm.add_argument("username")


def _members_table(project) -> str:  # noqa: ANN001
    from dstack.cli.render.tables import make_table

    rows = [[m.user.username, m.project_role] for m in project.members]
    return make_table(["USERNAME", "ROLE"], rows)


def _create(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, echo

    with api_client(args) as api:
        project = api.create_project(args.name, is_public=args.public)
    echo(f"Project {project.project_name} created" + (" (public)" if project.is_public else ""))
    return 0


def _update(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, echo

    with api_client(args) as api:
        project = api.update_project(args.name, is_public=args.public)
    echo(f"Project {project.project_name} is {'public' if project.is_public else 'private'}")
    return 0


def _destroy(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, confirm, echo

    question = f"Delete the project {args.name} on the server, for all its members?"
    if not args.yes and not confirm(question):
        return 0
    with api_client(args) as api:
        api.delete_projects([args.name])
    echo("OK")
    return 0


def _members(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, out

    with api_client(args) as api:
        out(_members_table(api.get_project(args.name)))
    return 0


def _add_member(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, out

    member = {"username": args.username, "project_role": args.role}
    with api_client(args) as api:
        out(_members_table(api.add_members(args.name, [member])))
    return 0


def _remove_member(args: argparse.Namespace) -> int:
    from dstack.cli.common import api_client, out

    with api_client(args) as api:
        out(_members_table(api.remove_members(args.name, [args.username])))
    return 0


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
