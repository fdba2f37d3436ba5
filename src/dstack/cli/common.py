"""Helpers every command shares: the project flag, the API client, prompts, the console.

This module must stay cheap to import (command modules import it at configure time, which
happens on every invocation of that command, `--help` included); heavy imports are local.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from dstack.errors import DstackError
from dstack.models.names import RESOURCE_NAME_RE as NAME_RE
from dstack.models.names import name_problem

if TYPE_CHECKING:
    from rich.console import Console

    from dstack.api.client import APIClient



class CLIError(DstackError):
    """A mistake in how the command was used; printed as one red line, exit 1."""


class CancelledByUser(DstackError):
    def __init__(self) -> None:
        super().__init__("Cancelled by user")


def add_project_arg(parser: argparse.ArgumentParser, sub: bool = False) -> None:
    """`sub`: on a subcommand, so that `dstack fleet --project X list` keeps X."""
    parser.add_argument(
        "--project",
        metavar="NAME",
        default=argparse.SUPPRESS if sub else os.environ.get("DSTACK_PROJECT"),
        help="the project to use (default: $DSTACK_PROJECT, else the default project "
        "in ~/.dstack/config.yml)",
    )


def add_json_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=["plain", "json"], default="plain", help="output format"
    )
    parser.add_argument(
        "--json", action="store_const", dest="format", const="json", help="output in JSON format"
    )


def api_client(args: argparse.Namespace) -> APIClient:
    from dstack.api.client import APIClient

    delay = float(os.environ.get("DSTACK_CLIENT_RETRY_DELAY", "1"))
    return APIClient.from_config(getattr(args, "project", None), retry_delay=delay)


def check_run_name(name: str) -> None:
    """Refuse a bad name before any request, with the rule in the message."""
    if not NAME_RE.fullmatch(name):
        raise CLIError(name_problem("run", name) or "Invalid run name")


_console: Console | None = None


def console() -> Console:
    """One rich console; wide when piped so tables are not wrapped at 80 columns."""
    global _console
    if _console is None:
        from rich.console import Console
        from rich.theme import Theme

        theme = Theme({"error": "red", "warning": "yellow", "secondary": "grey58", "code": "bold"})
        width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or 200
        _console = Console(theme=theme, width=width, highlight=False, soft_wrap=False)
    return _console


def out(text: Any = "", **kwargs: Any) -> None:
    console().print(text, **kwargs)


def echo(text: str = "") -> None:
    """Plain text, no markup interpretation (names may contain brackets)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def confirm(question: str, default_yes: bool | None = None) -> bool:
    """`<question> [y/n]: `; EOF counts as no, Ctrl+C cancels the command (exit 1)."""
    while True:
        sys.stdout.write(f"{question} [y/n]: ")
        sys.stdout.flush()
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            raise CancelledByUser() from None
        if not sys.stdin.isatty():
            sys.stdout.write("\n")
        if line == "":
            return bool(default_yes)
        answer = line.strip().lower()
        if answer in ("y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        if answer == "" and default_yes is not None:
            return default_yes
        sys.stdout.write("Please enter Y or N\n")


def print_json(data: Any, indent: int | None = None) -> None:
    import json

    if indent is None:
        text = json.dumps(data, separators=(", ", ": "), ensure_ascii=False)
    else:
        text = json.dumps(data, indent=indent, ensure_ascii=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
