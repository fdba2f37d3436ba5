"""Python SDK: `from dstack.api import APIClient`.

The client is imported on first use so that `import dstack.api` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["APIClient", "ServerError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dstack.api import client

        return getattr(client, name)
    raise AttributeError(name)
