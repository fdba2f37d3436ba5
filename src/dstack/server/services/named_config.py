"""A resource's configuration as an apply request carries it (fleets, volumes): parsed with
the configuration language's own errors, of the expected type, and named."""

from __future__ import annotations

from typing import Any, TypeVar

from dstack.errors import ConfigurationError, ServerClientError
from dstack.models.configurations import parse_configuration
from dstack.models.field_support import first_refusal
from dstack.models.names import name_problem

C = TypeVar("C")


def parse_named(data: dict[str, Any], expected: type[C], kind: str) -> C:
    try:
        conf = parse_configuration(data)
    except ConfigurationError as e:
        raise ServerClientError(str(e), field=e.path) from e
    if not isinstance(conf, expected):
        raise ServerClientError(f"the configuration is not a {kind}", field="type")
    if not getattr(conf, "name", None):
        raise ServerClientError(f"the {kind} configuration must have a `name`", field="name")
    problem = name_problem(kind, conf.name)  # type: ignore[attr-defined]
    if problem:
        raise ServerClientError(problem, field="name")
    refuse_unsupported(conf)
    return conf


def refuse_unsupported(conf: Any, prefix: str = "") -> None:
    """A field this server would ignore is refused, naming it (models/field_support.py)."""
    refusal = first_refusal(conf)
    if refusal is not None:
        raise ServerClientError(
            str(refusal), field=f"{prefix}{refusal.path}", code="unsupported_field"
        )
