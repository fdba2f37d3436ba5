"""An in-process server for route tests: a fresh SQLite database, no local backend, an admin
token, and a TestClient that sends it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dstack.server.app import create_app
from dstack.server.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@contextmanager
def app_client(tmp: Path, token: str, **settings: Any) -> Iterator[TestClient]:
    st = Settings(
        server_dir=tmp, database_url=f"sqlite+aiosqlite:///{tmp / 'db.sqlite'}",
        admin_token=token, local_backend_enabled=False, inventory_sweep_seconds=3600,
        **settings,
    )  # fmt: skip
    with TestClient(create_app(st)) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        yield c
