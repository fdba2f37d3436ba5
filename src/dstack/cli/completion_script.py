"""Shell completion scripts generated from the argparse tree (`dstack completion bash|zsh`).

Generated, not hand-written, so a new command or flag is completed the day it lands. The tree
is flattened into tables keyed by the command path (`"fleet delete"`): its subcommands, its
options, and for each option that takes a value what to offer (a file, fixed choices, or
nothing). The shell function walks the words typed so far through those tables, so completion
costs no Python start-up. Resource names (runs, fleets, volumes, gateways, projects) come from
`dstack completion --names KIND`, which asks the server and prints nothing on any failure.
zsh loads the same function through `bashcompinit`.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field

# Positional argument dest -> the kind of name `dstack completion --names` lists.
NAME_KINDS = {
    "run_name": "runs",
    "run_names": "runs",
    "fleet_name": "fleets",
    "volume_name": "volumes",
    "gateway_name": "gateways",
    "project_name": "projects",
}
# A positional `name` names a resource of the command group it is under (`fleet delete NAME`).
_GROUP_KINDS = {"fleet": "fleets", "volume": "volumes", "gateway": "gateways",
                "project": "projects", "run": "runs"}  # fmt: skip
_FILE_DESTS = {"file", "files", "config", "configuration_file", "identity_file", "ssh_key"}


@dataclass
class Node:
    path: str
    subcommands: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    # option -> "@file", "@name:<kind>", a space-joined choice list, or "" (free value)
    values: dict[str, str] = field(default_factory=dict)
    positional: str = ""  # what a positional argument completes to ("@name:runs", choices, "")


def walk(parser: argparse.ArgumentParser, path: str = "dstack") -> Iterator[Node]:
    """Every command path of the tree, parents first."""
    node = Node(path)
    children: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            # Aliases (`destroy`) are their own paths over the same sub-tree.
            for name, sub in action.choices.items():
                node.subcommands.append(name)
                children.append((name, sub))
        elif action.option_strings:
            if action.help == argparse.SUPPRESS:
                continue
            node.options += action.option_strings
            if action.nargs != 0:
                for opt in action.option_strings:
                    node.values[opt] = _value_kind(action, path)
        elif not node.positional:
            node.positional = _value_kind(action, path)
    yield node
    for name, sub in children:
        yield from walk(sub, f"{path} {name}")


def _value_kind(action: argparse.Action, path: str) -> str:
    if action.choices:
        return " ".join(str(c) for c in action.choices)
    if action.dest == "project":
        return "@name:projects"
    group = path.split()[1] if len(path.split()) > 1 else ""
    if not action.option_strings and action.dest in ("name", "names") and group in _GROUP_KINDS:
        return f"@name:{_GROUP_KINDS[group]}"
    if action.dest in NAME_KINDS and not action.option_strings:
        return f"@name:{NAME_KINDS[action.dest]}"
    if action.dest in _FILE_DESTS or (action.metavar or "").upper() in ("FILE", "PATH"):
        return "@file"
    return ""


def _table(name: str, rows: dict[str, str]) -> str:
    body = "".join(f"    [{shlex.quote(k)}]={shlex.quote(v)}\n" for k, v in rows.items())
    return f"declare -A {name}=(\n{body})\n"


_FUNCTION = r"""
_dstack_completion() {
    local cur="${COMP_WORDS[COMP_CWORD]}" path="dstack" i w key sub
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        if [[ "$w" == -* ]]; then
            key="$path $w"
            [[ -n "${_dstack_values[$key]+x}" && "$w" != *=* ]] && ((i++))
            continue
        fi
        for sub in ${_dstack_subs[$path]}; do
            if [[ "$sub" == "$w" ]]; then path="$path $w"; break; fi
        done
    done
    if ((COMP_CWORD > 1)); then
        key="$path ${COMP_WORDS[COMP_CWORD-1]}"
        if [[ "${COMP_WORDS[COMP_CWORD-1]}" == -* && -n "${_dstack_values[$key]+x}" ]]; then
            _dstack_complete_kind "${_dstack_values[$key]}"
            return 0
        fi
    fi
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "${_dstack_opts[$path]}" -- "$cur"))
    elif [[ -n "${_dstack_subs[$path]}" ]]; then
        COMPREPLY=($(compgen -W "${_dstack_subs[$path]}" -- "$cur"))
    else
        _dstack_complete_kind "${_dstack_positional[$path]}"
    fi
    return 0
}

_dstack_complete_kind() {
    local cur="${COMP_WORDS[COMP_CWORD]}"
    case "$1" in
        @file) COMPREPLY=($(compgen -f -- "$cur")) ;;
        @name:*)
            local names
            names="$(dstack completion --names "${1#@name:}" 2>/dev/null)"
            COMPREPLY=($(compgen -W "$names" -- "$cur")) ;;
        "") COMPREPLY=() ;;
        *) COMPREPLY=($(compgen -W "$1" -- "$cur")) ;;
    esac
}
"""


def bash_script(parser: argparse.ArgumentParser) -> str:
    nodes = list(walk(parser))
    subs = {n.path: " ".join(n.subcommands) for n in nodes if n.subcommands}
    opts = {n.path: " ".join(n.options) for n in nodes}
    values = {f"{n.path} {o}": v for n in nodes for o, v in n.values.items()}
    positional = {n.path: n.positional for n in nodes if n.positional}
    return (
        "# dstack shell completion (generated by `dstack completion`)\n"
        + _table("_dstack_subs", subs)
        + _table("_dstack_opts", opts)
        + _table("_dstack_values", values)
        + _table("_dstack_positional", positional)
        + _FUNCTION
        + "complete -o default -F _dstack_completion dstack\n"
    )


def zsh_script(parser: argparse.ArgumentParser) -> str:
    """zsh runs the bash function through `bashcompinit` (as argcomplete's script does)."""
    return (
        "#compdef dstack\n"
        "autoload -U +X compinit && { (( $+functions[compdef] )) || compinit; }\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + bash_script(parser)
    )
