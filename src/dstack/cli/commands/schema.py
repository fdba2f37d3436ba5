"""`dstack schema`: the JSON schema of `.dstack.yml` files (for editors: `> dstack.schema.json`)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "example:\n  dstack schema > dstack.schema.json\n"
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dstack.cli.common import print_json
    from dstack.models.schema import configuration_json_schema

    print_json(configuration_json_schema(), indent=2)
    return 0
