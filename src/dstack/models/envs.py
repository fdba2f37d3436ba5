"""`env` in list or mapping form, normalised to `dict[str, str | None]`, and `${{ }}` checks.

`None` marks a bare `KEY`: its value must come from the client's environment (or `-e KEY=...`),
which only the CLI can resolve, so the model keeps the hole instead of guessing.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INTERPOLATION_RE = re.compile(r"\$\{\{(.*?)\}\}")
_REFERENCE_RE = re.compile(r"^\s*([a-z_]+)\.([A-Za-z0-9_\-]+)\s*$")
_GROUP_REF_RE = re.compile(r"^\s*groups\s*\[")


def _scalar_to_str(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return value if isinstance(value, str) else str(value)
    raise ValueError(f"value of environment variable {key} must be a string, got {value!r}")


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not ENV_KEY_RE.match(key):
        raise ValueError(f"invalid environment variable name '{key}'")
    return key


def check_env_value(key: str, value: str) -> None:
    """Only `${{ secrets.NAME }}` may be interpolated into env values (the server resolves it)."""
    without_escapes = value.replace("$$", "")
    for match in _INTERPOLATION_RE.finditer(without_escapes):
        expression = match.group(1)
        if _GROUP_REF_RE.match(expression):
            raise ValueError(f"{key}: group IP references are not allowed in env")
        ref = _REFERENCE_RE.match(expression)
        if ref is None or ref.group(1) != "secrets":
            raise ValueError(
                f"{key}: unsupported interpolation '${{{{{expression}}}}}'"
                " (only ${{ secrets.NAME }} is allowed in env)"
            )
    tail = _INTERPOLATION_RE.sub("", without_escapes)
    if "${{" in tail:
        raise ValueError(f"{key}: unterminated interpolation in '{value}'")


def secret_references(value: str) -> list[str]:
    """Names of the secrets a value refers to, for the server to resolve at job start."""
    names = []
    for match in _INTERPOLATION_RE.finditer(value.replace("$$", "")):
        ref = _REFERENCE_RE.match(match.group(1))
        if ref is not None and ref.group(1) == "secrets":
            names.append(ref.group(2))
    return names


def parse_env(value: Any) -> dict[str, str | None]:
    """Accept `[KEY=VALUE, KEY=, KEY]` or `{KEY: VALUE}`; duplicates in list form are errors."""
    if value is None:
        return {}
    result: dict[str, str | None] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            result[_check_key(key)] = _scalar_to_str(str(key), item)
    elif isinstance(value, list):
        for entry in value:
            if not isinstance(entry, str):
                raise ValueError(f"env list entries must be KEY=VALUE strings, got {entry!r}")
            key, sep, item = entry.partition("=")
            key = _check_key(key.strip())
            if key in result:
                raise ValueError(f"duplicate environment variable '{key}'")
            result[key] = item if sep else None
    else:
        raise ValueError("env must be a list of KEY=VALUE strings or a mapping")
    for key, item in result.items():
        if item is not None:
            check_env_value(key, item)
    return result


Env = Annotated[
    dict[str, str | None],
    BeforeValidator(parse_env),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "string"}},
                {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
                },
            ]
        }
    ),
]


_TOKEN_RE = re.compile(r"\$\$|\$\{\{(.*?)\}\}")


def interpolate_secrets(value: str, secrets: dict[str, str]) -> str:
    """`${{ secrets.NAME }}` -> the secret's value, `$$` -> `$`, for a value that refers to a
    secret (a value without a reference is left exactly as written). The server calls it when
    the job starts; every name must be in `secrets` (it checked them)."""
    if not secret_references(value):
        return value

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        ref = _REFERENCE_RE.match(match.group(1))
        if ref is None or ref.group(1) != "secrets":
            return match.group(0)
        return secrets[ref.group(2)]

    return _TOKEN_RE.sub(sub, value)
