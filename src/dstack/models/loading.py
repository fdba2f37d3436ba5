"""Reading configuration files from disk: YAML with our quirks (yaml_lines.py), and every
error naming the file and, where it can be found, the line.

Kept apart from the models it loads: `configurations` and `profiles` only validate mappings,
so they never need the loader, and the loader depends on them one way only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dstack.errors import ConfigurationError
from dstack.models import yaml_lines
from dstack.models.configurations import AnyConfiguration, parse_configuration
from dstack.models.field_support import first_refusal
from dstack.models.validation import M, validate_model


def load_configuration(path: str | Path) -> AnyConfiguration:
    """Read and validate a `.dstack.yml` file; errors carry the file and line."""
    return _load_file(path, parse_configuration)


def load_yaml_model(path: str | Path, model: type[M]) -> M:
    """Read a YAML file into any strict model (used for `profiles.yml`)."""
    return _load_file(path, lambda data: validate_model(model, data))


def load_configuration_text(text: str, name: str) -> AnyConfiguration:
    """Validate configuration text read elsewhere (stdin); `name` stands for the file."""
    return _load_text(text, name, parse_configuration)


def load_for_apply(path: str | Path, text: str | None = None) -> AnyConfiguration:
    """What `dstack apply` reads: a valid configuration whose every set field this server
    supports (models/field_support.py); a refused field is an error at its file and line.
    `text` given: the file's contents were read already (stdin)."""
    name = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read file: {exc}", file=name) from None
    conf = _load_text(text, name, parse_configuration)
    refusal = first_refusal(conf)
    if refusal is not None:
        loc = tuple(refusal.path.split("."))
        line = yaml_lines.find_line(yaml_lines.line_map(text), loc) or 1
        raise ConfigurationError(refusal.message, path=refusal.path, file=name, line=line)
    return conf


def _load_file(path: str | Path, parse: Callable[[dict[str, Any]], Any]) -> Any:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read file: {exc}", file=name) from None
    return _load_text(text, name, parse)


def _load_text(text: str, name: str, parse: Callable[[dict[str, Any]], Any]) -> Any:
    try:
        data = yaml_lines.load_yaml(text)
    except yaml.YAMLError as exc:
        line = yaml_lines.error_line(exc)
        parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        problem = " ".join(p for p in parts if p) or str(exc).splitlines()[0]
        raise ConfigurationError(f"invalid YAML: {problem}", file=name, line=line) from None
    if data is None:
        raise ConfigurationError("configuration file is empty", file=name, line=1)
    if not isinstance(data, dict):
        raise ConfigurationError("configuration must be a mapping", file=name, line=1)
    try:
        return parse(data)
    except ConfigurationError as exc:
        lines = yaml_lines.line_map(text)
        loc = getattr(exc, "loc", None) or ((exc.path,) if exc.path else ())
        raise ConfigurationError(
            exc.message, path=exc.path, file=name, line=yaml_lines.find_line(lines, loc) or 1
        ) from None
