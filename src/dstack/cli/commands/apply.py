"""`dstack apply`: validate a configuration, show the plan, confirm, submit, attach."""

from __future__ import annotations

import argparse
import os
import sys

from dstack.cli.apply_overrides import add_run_flags
from dstack.cli.common import CLIError, add_project_arg
from dstack.errors import DstackError

EPILOG = """examples:
  echo n | dstack apply -f train.dstack.yml   show the plan only
  dstack apply -f train.dstack.yml            submit, then stream logs until the run ends
  dstack apply -f train.dstack.yml -y -d      submit without asking, do not attach
  dstack apply -f train.dstack.yml --force -y stop the active run of the same name, resubmit
  dstack apply -f task.dstack.yml --gpu A100:2 --max-price 2.5 -e HF_TOKEN
  dstack apply -f task.dstack.yml -y -- --epochs 3   (fills ${{ run.args }})
  dstack apply -f fleet.dstack.yml            fleets, volumes and gateways as well

Without -f, ./.dstack.yml (then ./.dstack.yaml) is used. `-f -` reads stdin (needs -y).
The working directory is uploaded (respecting .gitignore and .dstackignore).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_project_arg(parser)
    parser.add_argument("-f", "--file", metavar="FILE",
                        help="the configuration file (`-` reads stdin; default .dstack.yml)")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--force", action="store_true",
                        help="apply even if nothing changed (stops an identical active run)")
    parser.add_argument("-d", "--detach", action="store_true",
                        help="submit and exit without attaching")
    parser.add_argument("-v", "--verbose", action="store_true", help="show all plan properties")
    add_run_flags(parser)
    parser.add_argument("--host", metavar="HOST",
                        help="local address forwarded ports bind to (default localhost)")
    parser.set_defaults(handler=run)


def config_file(path: str | None) -> str:
    """The `-f` path, or the default `.dstack.yml`/`.dstack.yaml` in the current directory."""
    if path is None:
        for name in (".dstack.yml", ".dstack.yaml"):
            if os.path.isfile(name):
                return name
        raise CLIError(
            "No configuration file specified via `-f` and no default .dstack.yml configuration"
            " found"
        )
    if path != "-" and not os.path.isfile(path):
        raise CLIError(f"Configuration file {path} does not exist")
    return path


def load(path: str, yes: bool):  # noqa: ANN201 - a configuration model
    from dstack.models.loading import load_for_apply

    if path != "-":
        return load_for_apply(path)
    if not yes:
        raise CLIError("Cannot read configuration from stdin if -y/--yes is not specified")
    return load_for_apply("<stdin>", sys.stdin.read())


def run(args: argparse.Namespace) -> int:
    path = config_file(args.file)
    conf = load(path, args.yes)
    try:
        if conf.type in ("dev-environment", "task", "service"):
            from dstack.cli.apply_runs import apply_run

            return apply_run(args, conf, path)
        from dstack.cli.apply_other import apply_other

        return apply_other(args, conf, path)
    except KeyboardInterrupt:
        print("\nOperation interrupted by user. Exiting...")
        return 0
    except DstackError as e:  # the client's ServerError: importing it here would load httpx
        from dstack.cli.field_lines import locate

        where = locate(path, getattr(e, "field", None))
        if where is None or str(e).startswith(where):
            raise
        raise CLIError(f"{where}: {e}") from e
