"""CLI flags of `dstack apply` merged into a normalised configuration mapping.

Pure functions on dicts (no I/O besides reading the environment passed in) so the precedence
rules are unit-tested: profile < configuration file < command-line flags.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping
from typing import Any

from dstack.cli.common import CLIError
from dstack.cli.repo_flags import add_repo_flags, apply_repo_flags

RUN_TYPES = ("dev-environment", "task", "service")
RUN_ARGS_RE = "${{ run.args }}"


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The run-configuration flags of cli.md §2 (also used by `dstack offer`)."""
    g = parser.add_argument_group("run configuration options")
    g.add_argument("-n", "--name", dest="run_name", metavar="RUN_NAME", help="the run name")
    g.add_argument("--max-offers", type=int, default=3, metavar="N",
                   help="offers shown in the plan (default 3)")
    g.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="set an environment variable; KEY alone takes the local value")
    add_resource_flags(g)
    add_profile_flags(g)
    g.add_argument("-p", "--port", action="append", default=[], metavar="MAPPING",
                   help="port mapping override (dev-environment, task)")
    g.add_argument("--ssh-identity", metavar="SSH_PRIVATE_KEY",
                   help="private key for SSH to the run (its public key is sent as the run's"
                   " key; default ~/.dstack/ssh/id_rsa, created on first use)")
    g.add_argument("--no-repo", action="store_true", help="do not upload the working directory")
    add_repo_flags(g)


def add_resource_flags(g: Any) -> None:
    g.add_argument("--cpu", metavar="SPEC", help="CPU requirement, e.g. 4, x86:8..")
    g.add_argument("--gpu", metavar="SPEC", help="GPU requirement, e.g. A100:40GB:2, 24GB..")
    g.add_argument("--memory", metavar="RANGE", help="memory, e.g. 128GB..256GB")
    g.add_argument("--disk", metavar="RANGE", help="disk size, e.g. 100GB..")


def add_profile_flags(g: Any) -> None:
    g.add_argument("--profile", metavar="NAME", help="the profile from profiles.yml to use")
    g.add_argument("--no-profile", action="store_true", help="do not use any profile")
    g.add_argument("--max-price", type=float, metavar="PRICE", help="max price per hour, $")
    g.add_argument("--max-duration", metavar="DURATION", help="max run duration, or `off`")
    g.add_argument("-b", "--backend", dest="backends", action="append", metavar="NAME",
                   help="allowed backend (repeatable)")
    g.add_argument("-r", "--region", dest="regions", action="append", metavar="NAME",
                   help="allowed region (repeatable)")
    g.add_argument("--instance-type", dest="instance_types", action="append", metavar="NAME",
                   help="allowed instance type (repeatable)")
    g.add_argument("--fleet", dest="fleets", action="append", metavar="NAME",
                   help="only use these fleets (repeatable)")
    g.add_argument("-R", "--reuse", action="store_true", help="only reuse existing instances")
    g.add_argument("--dont-destroy", action="store_true", help="never terminate idle instances")
    g.add_argument("--idle-duration", metavar="DURATION", help="idle time before termination")
    g.add_argument("--spot", dest="spot_policy", action=SpotFlag, nargs=0, const="spot",
                   help="spot instances only")
    g.add_argument("--on-demand", dest="spot_policy", action=SpotFlag, nargs=0,
                   const="on-demand", help="on-demand instances only")
    g.add_argument("--spot-auto", dest="spot_policy", action=SpotFlag, nargs=0, const="auto",
                   help="spot if available, else on-demand")
    g.add_argument("--spot-policy", dest="spot_policy", action=SpotFlag,
                   choices=["spot", "on-demand", "auto"], help="the spot policy")
    g.add_argument("--retry", dest="retry", action="store_const", const=True,
                   help="retry on all events for 1h")
    g.add_argument("--no-retry", dest="retry", action="store_const", const=False,
                   help="do not retry")
    g.add_argument("--retry-duration", metavar="DURATION", help="retry on all events this long")


class SpotFlag(argparse.Action):
    """`--spot`, `--on-demand`, `--spot-auto` and `--spot-policy` set one value: two that
    disagree are refused (the last one silently winning would hide the user's mistake)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
        option_string: str | None = None,
    ) -> None:
        value = values if isinstance(values, str) else self.const
        seen = getattr(namespace, "_spot_flag", None)
        if seen is not None and seen[1] != value:
            parser.error(f"{seen[0]} and {option_string} are mutually exclusive")
        namespace._spot_flag = (option_string, value)
        setattr(namespace, self.dest, value)


def check_exclusive(args: argparse.Namespace) -> None:
    """argparse groups cannot express these because they share `dest`s; check by hand."""
    if getattr(args, "profile", None) and getattr(args, "no_profile", False):
        raise CLIError("--profile and --no-profile are mutually exclusive")
    creation = [f for f in ("reuse", "dont_destroy", "idle_duration") if getattr(args, f, None)]
    if len(creation) > 1:
        raise CLIError("-R/--reuse, --dont-destroy and --idle-duration are mutually exclusive")
    if getattr(args, "retry", None) is not None and getattr(args, "retry_duration", None):
        raise CLIError("--retry, --no-retry and --retry-duration are mutually exclusive")


def parse_env_flags(values: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """`-e KEY=VALUE` as given, `-e KEY` from the local environment (else an error)."""
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key:
            raise CLIError(f"Invalid -e value '{item}': expected KEY or KEY=VALUE")
        if sep:
            result[key] = value
        elif key in environ:
            result[key] = environ[key]
        else:
            raise CLIError(f"Environment variable {key} is not set")
    return result


def resolve_env(env: Mapping[str, str | None], environ: Mapping[str, str]) -> dict[str, str]:
    """Fill bare `KEY` entries from the local environment; a missing one is an error."""
    result: dict[str, str] = {}
    for key, value in env.items():
        if value is None:
            if key not in environ:
                raise CLIError(f"Environment variable {key} is not set")
            value = environ[key]
        result[key] = value
    return result


def _merge_ports(current: list[Any], overrides: list[str]) -> list[Any]:
    """`-p` replaces the mapping of the same container port and adds the others."""

    def container_port(item: Any) -> str:
        if isinstance(item, dict):
            return str(item.get("container_port"))
        return str(item).rpartition(":")[2]

    wanted = {container_port(o) for o in overrides}
    return [p for p in current if container_port(p) not in wanted] + list(overrides)


def substitute_run_args(commands: list[str], run_args: list[str]) -> list[str]:
    """`${{ run.args }}` in commands becomes the shell-quoted RUN_ARGS."""
    joined = shlex.join(run_args)
    return [c.replace(RUN_ARGS_RE, joined).replace("${{run.args}}", joined) for c in commands]


def apply_profile(conf: dict[str, Any], profile: Mapping[str, Any] | None) -> dict[str, Any]:
    """Profile values fill only what the configuration left unset."""
    if not profile:
        return conf
    out = dict(conf)
    for key, value in profile.items():
        if key in ("name", "default") or value is None:
            continue
        if out.get(key) is None:
            out[key] = value
    return out


def apply_overrides(
    conf: dict[str, Any],
    args: argparse.Namespace,
    environ: Mapping[str, str],
    run_args: list[str] | None = None,
) -> dict[str, Any]:
    """Return a new mapping with every given flag applied (flags win over the file)."""
    out = dict(conf)
    kind = out.get("type")
    if getattr(args, "run_name", None):
        out["name"] = args.run_name
    env_flags = parse_env_flags(getattr(args, "env", None) or [], environ)
    if env_flags:
        from dstack.models.envs import parse_env

        # The file may give env as a list (`- KEY=VALUE`); normalise it before merging.
        out["env"] = {**parse_env(out.get("env") or {}), **env_flags}
    resources = dict(out.get("resources") or {})
    for flag in ("cpu", "gpu", "memory", "disk"):
        value = getattr(args, flag, None)
        if value is not None:
            resources[flag] = value
    if resources != (out.get("resources") or {}):
        out["resources"] = resources
    _apply_profile_flags(out, args)
    apply_repo_flags(out, args)
    ports = getattr(args, "port", None) or []
    if ports:
        if kind not in ("dev-environment", "task"):
            raise CLIError("-p/--port is supported for dev environments and tasks only")
        out["ports"] = _merge_ports(list(out.get("ports") or []), ports)
    if run_args:
        if kind not in ("task", "service"):
            raise CLIError("Run arguments are supported for tasks and services only")
        out["commands"] = substitute_run_args(list(out.get("commands") or []), run_args)
    return out


def _apply_profile_flags(out: dict[str, Any], args: argparse.Namespace) -> None:
    simple = {
        "max_price": "max_price",
        "max_duration": "max_duration",
        "backends": "backends",
        "regions": "regions",
        "instance_types": "instance_types",
        "fleets": "fleets",
        "spot_policy": "spot_policy",
        "idle_duration": "idle_duration",
    }
    for attr, key in simple.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    if getattr(args, "reuse", False):
        out["creation_policy"] = "reuse"
    if getattr(args, "dont_destroy", False):
        out["idle_duration"] = "off"
    retry = getattr(args, "retry", None)
    if retry is not None:
        out["retry"] = retry
    if getattr(args, "retry_duration", None):
        out["retry"] = {"duration": args.retry_duration}
