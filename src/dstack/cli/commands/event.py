"""`dstack event`: the audit trail (who changed what, when)."""

from __future__ import annotations

import argparse

from dstack.cli.common import add_project_arg

TARGETS = ("fleet", "run", "volume", "gateway", "secret")
WITHIN = ("fleet", "run", "gateway")
TYPES = [
    "project", "user", "fleet", "instance", "run", "job", "volume", "gateway",
    "gateway-replica", "secret", "preset",
]  # fmt: skip


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "examples:\n  dstack event\n  dstack event --target-run my-run\n" \
                    "  dstack event --since 1h -w\n"
    _flags(parser)
    parser.set_defaults(handler=run)
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    lst = sub.add_parser("list", help="list events", description="List events")
    _flags(lst, sub=True)
    lst.set_defaults(handler=run)


def _flags(parser: argparse.ArgumentParser, sub: bool = False) -> None:
    suppress = {"default": argparse.SUPPRESS} if sub else {}
    add_project_arg(parser, sub=sub)
    parser.add_argument("-w", "--watch", action="store_true", help="keep printing new events",
                        **suppress)
    parser.add_argument("--since", metavar="SINCE", help="a duration (1h, 2d) or a time",
                        **suppress)
    target = parser.add_mutually_exclusive_group()
    for kind in TARGETS:
        target.add_argument(f"--target-{kind}", metavar="NAME",
                            help=f"only events about this {kind}", **suppress)
    within = parser.add_mutually_exclusive_group()
    for kind in WITHIN:
        within.add_argument(f"--within-{kind}", metavar="NAME",
                            help=f"only events within this {kind}", **suppress)
    parser.add_argument("--include-target-type", action="append", choices=TYPES,
                        metavar="TYPE", help="only these target types (repeatable)", **suppress)


def _target(args: argparse.Namespace) -> tuple[str | None, str | None]:
    for kind in TARGETS:
        value = getattr(args, f"target_{kind}", None)
        if value:
            return kind, value
    if getattr(args, "within_gateway", None):  # a gateway has no child objects with events
        return "gateway", args.within_gateway
    return None, None


def _within(args: argparse.Namespace) -> dict[str, str]:
    """`--within-run X`: the run's events and its jobs'; `--within-fleet X`: the fleet's and its
    instances' (a target filter would keep only the run's or fleet's own events)."""
    return {
        f"within_{kind}": value
        for kind in ("fleet", "run")
        if (value := getattr(args, f"within_{kind}", None))
    }


def format_event(event) -> str:  # noqa: ANN001
    when = event.recorded_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    parts = [f"[{when}]"]
    if event.actor_user:
        parts.append(f"[👤{event.actor_user}]")
    if event.targets:
        names = ", ".join(f"{t.type} {t.name}" for t in event.targets)
        parts.append(f"[{names}]")
    parts.append(event.message)
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    import time

    from dstack.cli.common import api_client, echo
    from dstack.cli.runs import parse_since

    api = api_client(args)
    kind, name = _target(args)
    since = parse_since(args.since) if getattr(args, "since", None) else None
    types = set(getattr(args, "include_target_type", None) or [])
    seen: set[str] = set()
    limit = 1000 if since else 100
    try:
        while True:
            events = api.list_events(target_type=kind, target_name=name, since=since,
                                     limit=limit, **_within(args))
            for event in events:
                if event.id in seen:
                    continue
                seen.add(event.id)
                if types and not any(t.type in types for t in event.targets):
                    continue
                echo(format_event(event))
                since = event.recorded_at
            if not getattr(args, "watch", False):
                return 0
            time.sleep(2)
    except KeyboardInterrupt:
        return 0
