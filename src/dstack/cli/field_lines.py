"""Server refusals located in the user's file.

The server names the field it refused as a path into the request body
(`run_spec.configuration.instances`, `plan.run_spec.configuration.groups.1.replicas`,
`configuration.volumes`, `backends[2]`); the user thinks in lines of their YAML file. The CLI
still has the file, so it turns the path into `FILE:LINE` instead of making the user search.
"""

from __future__ import annotations

import re
from pathlib import Path

from dstack.models.yaml_lines import find_line, line_map

_MARKER = "configuration."
_TOKEN = re.compile(r"[^.\[\]]+")


def field_loc(field: str | None) -> tuple[str | int, ...] | None:
    """The path inside the configuration file that a server `field` names, or None when the
    field is not about the file (a run name, a plan's generation, a token)."""
    if not field:
        return None
    if _MARKER in field:
        rest = field.rsplit(_MARKER, 1)[1]
    elif field.startswith("backends["):
        rest = field  # fleet refusals name the list item directly
    else:
        return None
    return tuple(int(p) if p.isdigit() else p for p in _TOKEN.findall(rest))


def locate(path: str, field: str | None) -> str | None:
    """`FILE:LINE` for the field in the configuration file at `path`, when both are known."""
    loc = field_loc(field)
    if loc is None or path == "-":
        return None
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    line = find_line(line_map(text), loc)
    return f"{path}:{line}" if line is not None else None
