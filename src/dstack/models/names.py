"""The one rule for names users give to resources (runs, fleets, volumes, gateways) and the
looser one for projects and users, each checked with `fullmatch` (a `$` with `match` lets a
trailing newline through). A refused name is never echoed in full: the message shows a short,
escaped prefix, so a 10 kB name or an ANSI escape does not reach anyone's terminal."""

from __future__ import annotations

import re

RESOURCE_NAME_RE = re.compile(r"[a-z][a-z0-9-]{1,40}")
RESOURCE_NAME_RULE = "2-41 characters, lowercase letters, digits and '-', starting with a letter"
PROJECT_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,50}")
PROJECT_NAME_RULE = "1-50 characters, letters, digits, '-' and '_'"


def shown(value: object, limit: int = 48) -> str:
    """A refused value as messages show it: repr-escaped, at most `limit` characters of it."""
    text = str(value)
    head = repr(text[:limit])
    return head + (f" (cut, {len(text)} characters)" if len(text) > limit else "")


def name_problem(
    kind: str, value: object, pattern: re.Pattern[str] = RESOURCE_NAME_RE
) -> str | None:
    """None for a valid name, else the message that refuses it."""
    if isinstance(value, str) and pattern.fullmatch(value):
        return None
    rule = RESOURCE_NAME_RULE if pattern is RESOURCE_NAME_RE else PROJECT_NAME_RULE
    return f"Invalid {kind} name {shown(value)}: use {rule}"


def is_valid_name(value: object, pattern: re.Pattern[str] = RESOURCE_NAME_RE) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None
