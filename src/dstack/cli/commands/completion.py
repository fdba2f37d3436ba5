"""`dstack completion bash|zsh` (cli.md §22): print a completion script to stdout.

Install: `source <(dstack completion bash)` in ~/.bashrc, or
`dstack completion zsh > "${fpath[1]}/_dstack"`. The script is generated from the parser tree
(cli/completion_script.py). `--names KIND` is what the script calls to complete resource
names; it prints nothing when no server answers, so a tab never shows an error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

NAME_KINDS = ("runs", "fleets", "volumes", "gateways", "projects")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples:\n  source <(dstack completion bash)\n"
        '  dstack completion zsh > "${fpath[1]}/_dstack"\n'
    )
    parser.add_argument("shell", nargs="?", choices=["bash", "zsh"], help="the shell")
    parser.add_argument("--names", choices=NAME_KINDS, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.names:
        with contextlib.suppress(Exception):
            print("\n".join(_names(args.names)))
        return 0
    if not args.shell:
        from dstack.cli.common import CLIError

        raise CLIError("Specify the shell: dstack completion bash|zsh")
    from dstack.cli.completion_script import bash_script, zsh_script
    from dstack.cli.main import build_parser

    parser = build_parser([], full=True)
    sys.stdout.write(bash_script(parser) if args.shell == "bash" else zsh_script(parser))
    return 0


def _names(kind: str) -> list[str]:
    if kind == "projects":
        from dstack.client_config import load_projects

        return [p.name for p in load_projects()]
    os.environ.setdefault("DSTACK_CLIENT_RETRY_DELAY", "0")
    from dstack.cli.common import api_client

    api = api_client(argparse.Namespace(project=os.environ.get("DSTACK_PROJECT")))
    if kind == "runs":
        return [r.run_spec.run_name for r in api.list_runs() if r.run_spec.run_name]
    getter = {"fleets": "list_fleets_raw", "volumes": "list_volumes_raw",
              "gateways": "list_gateways_raw"}[kind]  # fmt: skip
    return [str(x.get("name")) for x in getattr(api, getter)() if x.get("name")]
