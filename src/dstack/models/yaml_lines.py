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


# A configuration is a few hundred nodes; aliases may multiply that, but past this many nodes
# (counting each alias as the copy a consumer would walk) it is an alias bomb, not a config.
MAX_EXPANDED_NODES = 100_000


def load_yaml(text: str) -> Any:
    """Parse one YAML document; raises `yaml.YAMLError` (with a mark) on malformed input.

    The node tree is composed first and checked before any Python object is built: a key given
    twice is an error naming both lines (PyYAML silently keeps the last), and a document whose
    aliases expand past `MAX_EXPANDED_NODES` is refused before anything walks the expansion.
    """
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_nodes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def check_nodes(root: yaml.Node) -> None:
    """Refuse duplicate keys and alias bombs; cost is linear in the *composed* tree."""
    sizes: dict[int, int] = {}
    _expanded_size(root, sizes, set())


def _expanded_size(node: yaml.Node, sizes: dict[int, int], visiting: set[int]) -> int:
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in visiting:
        raise yaml.composer.ComposerError(
            None, None, "found a recursive alias (a node that contains itself)", node.start_mark
        )
    visiting.add(key)
    total = 1
    if isinstance(node, yaml.MappingNode):
        _check_duplicate_keys(node)
        for key_node, value_node in node.value:
            total += _expanded_size(key_node, sizes, visiting)
            total += _expanded_size(value_node, sizes, visiting)
            _check_total(total, node)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded_size(item, sizes, visiting)
            _check_total(total, node)
    visiting.discard(key)
    sizes[key] = total
    return total


def _check_total(total: int, node: yaml.Node) -> None:
    if total > MAX_EXPANDED_NODES:
        raise yaml.composer.ComposerError(
            None,
            None,
            f"aliases expand this document past {MAX_EXPANDED_NODES} nodes (an alias bomb?)",
            node.start_mark,
        )


def _check_duplicate_keys(node: yaml.MappingNode) -> None:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        name = key_node.value
        first = seen.get(name)
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                first.start_mark,
                f"duplicate key {name!r} (lines {first.start_mark.line + 1} and "
                f"{key_node.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[name] = key_node


def error_line(exc: yaml.YAMLError) -> int | None:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def line_map(text: str) -> dict[tuple, int]:
    """Map each field path (keys and list indexes) to the 1-based line where it starts."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=ConfigLoader)  # noqa: S506
        if root is not None:
            check_nodes(root)  # never walk an alias bomb's expansion
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
