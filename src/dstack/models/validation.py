"""Pydantic's validation errors turned into one `ConfigurationError` line.

Its own module (below `configurations`, `profiles` and `loading`) so that every model of the
language reports errors the same way without the models importing the file loader, and the
file loader importing the models, in a circle.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dstack.errors import ConfigurationError

# Labels pydantic puts in an error's location for the branch of a union (`@openai`,
# `function-after[...]`, `int`); they mean nothing to a user and are left out of the path.
_UNION_LABEL_RE = re.compile(r"^(@.*|[a-z-]+\[.*\]|int|str|float|bool|none)$")
M = TypeVar("M", bound=BaseModel)


def format_path(loc: list[Any] | tuple[Any, ...]) -> str:
    """`resources.gpu`, `volumes[0].path`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _most_relevant(errors: list[Any]) -> Any:
    """The first error, except that a misspelt key beats the "Field required" it causes."""
    first = errors[0]
    if first["type"] == "missing":
        parent = first["loc"][:-1]
        for error in errors[1:]:
            if error["type"] == "extra_forbidden" and error["loc"][:-1] == parent:
                return error
    return first


def error_from_validation(exc: ValidationError) -> ConfigurationError:
    """The first pydantic error as one line: dotted field path and a human message. The raw
    location is kept on the error (`loc`) so a file loader can find the line it came from."""
    error = _most_relevant(exc.errors(include_url=False))
    loc: list[Any] = [
        p for p in error["loc"] if not (isinstance(p, str) and _UNION_LABEL_RE.match(p))
    ]
    ctx = error.get("ctx") or {}
    if isinstance(ctx.get("field"), str):
        loc.extend(int(p) if p.isdigit() else p for p in ctx["field"].split("."))
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    err = ConfigurationError(message, path=format_path(loc) or None)
    err.loc = tuple(loc)  # type: ignore[attr-defined]
    return err


def validate_model(model: type[M], data: Any) -> M:
    """`model.model_validate(data)`, raising nothing but `ConfigurationError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error_from_validation(exc) from None
    except RecursionError:
        raise ConfigurationError("configuration is nested too deeply") from None
