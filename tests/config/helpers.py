"""Small builders shared by the configuration tests."""

from __future__ import annotations

from typing import Any

import pytest

from dstack.errors import ConfigurationError
from dstack.models.configurations import parse_configuration


def task(**fields: Any) -> dict[str, Any]:
    return {"type": "task", "commands": ["echo hi"], **fields}


def service(**fields: Any) -> dict[str, Any]:
    return {"type": "service", "commands": ["serve"], "port": 8000, **fields}


def dev(**fields: Any) -> dict[str, Any]:
    return {"type": "dev-environment", **fields}


def error_of(data: Any) -> str:
    """The one-line error text `parse_configuration` gives for invalid `data`."""
    with pytest.raises(ConfigurationError) as info:
        parse_configuration(data)
    return str(info.value)


def resources(**fields: Any) -> Any:
    return parse_configuration(task(resources=fields)).resources
