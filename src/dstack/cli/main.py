"""`dstack` entry point.

Startup time matters (people type `dstack ps` all day), so this module imports only the
standard library: `--version` returns before any parser exists, and only the subcommand being
run has its module imported and its arguments configured; `--help` lists the others from the
table below without importing them.
"""

from __future__ import annotations

import argparse
import sys

# `import httpx` also imports httpx's own command-line client (click, pygments, rich's
# markdown) whenever click happens to be installed: ~0.3 s on every command, for nothing we
# use. A None entry makes that import fail, and httpx then skips it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

# name -> one-line description shown in `dstack --help` (kept here so help needs no imports).
COMMANDS: dict[str, str] = {
    "apply": "Apply a configuration: submit a run, create a fleet, volume or gateway",
    "attach": "Attach to a run: wait until it is running and stream its logs",
    "completion": "Print a shell completion script (bash or zsh)",
    "delete": "Delete the resource described by a configuration file",
    "event": "List events: who changed what and when",
    "fleet": "List, inspect and delete fleets",
    "gateway": "List and delete gateways",
    "logs": "Print the logs of a run",
    "metrics": "Show CPU, memory and GPU use of a run's jobs",
    "offer": "List the instance offers that match resource requirements",
    "project": "Manage projects: those in ~/.dstack/config.yml, and on the server",
    "ps": "List runs",
    "run": "Inspect a run (`dstack run get NAME --json`)",
    "schema": "Print the JSON schema of configuration files",
    "secret": "Manage the project's secrets (`${{ secrets.NAME }}` in runs)",
    "server": "Start the dstack server",
    "stop": "Stop a run",
    "user": "Manage the server's users (global admin)",
    "volume": "List and delete volumes",
}
ALIASES: dict[str, str] = {"destroy": "delete"}
# Internal commands: configured only when invoked, never listed in `dstack --help`.
HIDDEN: dict[str, str] = {
    "ssh-proxy": "Relay SSH to a run through the server (the ProxyCommand `attach` writes)",
}

EPILOG = "Run `dstack COMMAND --help` to see the options of a command."


class CLIParser(argparse.ArgumentParser):
    """Errors say what the user typed wrong, then exit 2 as argparse does."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        _print_error(message[:1].upper() + message[1:])
        sys.exit(2)


def _version() -> str:
    from dstack.version import __version__

    return __version__


def _target_command(argv: list[str]) -> str | None:
    for arg in argv:
        if arg.startswith("-"):
            continue
        return ALIASES.get(arg, arg)
    return None


def build_parser(argv: list[str], *, full: bool = False) -> argparse.ArgumentParser:
    """Configure only the subcommand that `argv` names; the others get their help line only.
    `full`: configure every listed command (the tree `dstack completion` generates from)."""
    parser = CLIParser(
        prog="dstack",
        description="dstack: a control plane for GPU workloads "
        "(dev environments, tasks, services, fleets).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--version", action="store_true", help="show the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CLIParser)
    target = _target_command(argv)
    commands = dict(COMMANDS)
    if target in HIDDEN:
        commands[target] = HIDDEN[target]
    for name, help_text in commands.items():
        aliases = [a for a, n in ALIASES.items() if n == name]
        cmd = sub.add_parser(
            name,
            aliases=aliases,
            help=help_text,
            description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == target or full:
            _load(name).configure(cmd)
    return parser


def _load(name: str):  # noqa: ANN202 - a module
    import importlib

    return importlib.import_module(f"dstack.cli.commands.{name.replace('-', '_')}")


def _print_error(message: str) -> None:
    stream = sys.stderr
    if stream.isatty():
        stream.write(f"\x1b[31m{message}\x1b[0m\n")
    else:
        stream.write(message + "\n")
    stream.flush()


def _run(argv: list[str]) -> int:
    if argv in (["-v"], ["--version"]):
        print(_version())
        return 0
    run_args: list[str] = []
    if _target_command(argv) == "apply" and "--" in argv:
        # `dstack apply -f task.yml -- --epochs 3`: everything after `--` is the task's.
        cut = argv.index("--")
        argv, run_args = argv[:cut], argv[cut + 1 :]
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        _print_error("Unrecognized arguments: " + " ".join(extra))
        return 2
    args.run_args = run_args
    if args.version:
        print(_version())
        return 0
    if not args.command:
        parser.print_help()
        return 0
    handler = getattr(args, "handler", None)
    if handler is None:
        # A command group run without a subcommand, e.g. `dstack run`.
        parser.parse_args([args.command, "--help"])
        return 0
    return handler(args) or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from dstack.errors import DstackError

    try:
        return _run(argv)
    except DstackError as e:
        _print_error(str(e))
        return 1
    except KeyboardInterrupt:
        print("\nOperation interrupted by user. Exiting...")
        return 0
    except BrokenPipeError:
        # `dstack ps | head`: the reader went away; nothing left to say.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
