"""runs/list filters of the reference this server does not apply are refused, not ignored."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app_client import TestClient, app_client

TOKEN = "admin-token-for-list-filters"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_client(tmp_path_factory.mktemp("list-filters"), TOKEN) as c:
        yield c


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"repo_id": "abc"}, "repo_id"),
        ({"username": "admin"}, "username"),
        ({"include_jobs": False}, "include_jobs"),
    ],
)
def test_unapplied_filters_are_refused(client: TestClient, body: dict[str, Any], field: str):
    r = client.post("/api/runs/list", json=body)
    assert r.status_code == 400, r.text
    assert f"`{field}" in r.text


def test_the_defaults_list(client: TestClient) -> None:
    r = client.post("/api/runs/list", json={"include_jobs": True, "project_name": "main"})
    assert r.status_code == 200, r.text
    assert r.json() == []
