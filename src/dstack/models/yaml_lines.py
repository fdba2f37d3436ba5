"""YAML loading for configurations: one document, no surprises, and line numbers for errors.

Line numbers come from a second, error-path-only pass that composes the node tree, so the
common case (a valid file) pays for a single fast load.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# YAML 1.1 reads `30:80` as the base-60 integer 1880; in a port list that is never what the
# user meant, so integers and floats are resolved without the sexagesimal forms.
_INT_RE = re.compile(
    r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.X,
)


class ConfigLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """Safe loader minus base-60 numbers."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse one YAML document; raises `yaml.YAMLError` (with a mark) on malformed input."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def error_line(exc: yaml.YAMLError) -> int | None:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def line_map(text: str) -> dict[tuple, int]:
    """Map each field path (keys and list indexes) to the 1-based line where it starts."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=ConfigLoader)  # noqa: S506
    except yaml.YAMLError:
        return lines
    if root is not None:
        lines[()] = root.start_mark.line + 1
        _walk(root, (), lines)
    return lines


def _walk(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child = (*path, key)
            lines.setdefault(child, key_node.start_mark.line + 1)
            _walk(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines.setdefault(child, item.start_mark.line + 1)
            _walk(item, child, lines)


def find_line(lines: dict[tuple, int], loc: tuple) -> int | None:
    """The line of the longest prefix of `loc` present in the file."""
    for end in range(len(loc), -1, -1):
        line = lines.get(tuple(str(p) if not isinstance(p, int) else p for p in loc[:end]))
        if line is not None:
            return line
    return None
