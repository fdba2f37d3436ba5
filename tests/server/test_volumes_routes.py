"""The volume routes through a whole server (the FastAPI app with its lifespan and its volume
reconciler running, a real SQLite); project main's AWS backend is the volume test double."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app_client import TestClient, app_client
from dstack.server import backends

from .test_volumes import VolumeCloud

TOKEN = "admin-token-for-volume-tests"
CONFIG = """\
projects:
- name: main
  backends:
  - type: aws
    creds: {type: access_key, access_key: AKIAEXAMPLE, secret_key: secret}
    regions: [us-east-1]
"""
VOLUME = {"type": "volume", "name": "data", "backend": "aws", "region": "us-east-1",
          "size": "20GB"}  # fmt: skip


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    cloud = VolumeCloud()
    monkeypatch.setitem(backends.FACTORIES, "aws", lambda: lambda *_: cloud)
    (tmp_path / "config.yml").write_text(CONFIG)
    with app_client(tmp_path, TOKEN) as c:
        c.cloud = cloud  # type: ignore[attr-defined]
        yield c


def _until(client: TestClient, check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met")


def test_plan_create_get_list_delete(client: TestClient) -> None:
    base = "/api/project/main/volumes"
    plan = client.post(f"{base}/get_plan", json={"configuration": VOLUME})
    assert plan.status_code == 200, plan.text
    assert (plan.json()["action"], plan.json()["size_gb"]) == ("create", 20)
    created = client.post(f"{base}/create", json={"configuration": VOLUME})
    assert created.status_code == 200 and created.json()["status"] == "submitted"

    def active() -> dict[str, Any] | None:
        v = client.post(f"{base}/get", json={"name": "data"}).json()
        return v if v["status"] == "active" else None

    vol = _until(client, active)
    assert vol["provisioning_data"]["availability_zone"] == "us-east-1a"
    assert [v["name"] for v in client.post(f"{base}/list").json()] == ["data"]
    assert [v["name"] for v in client.post("/api/volumes/list").json()] == ["data"]
    changed = client.post(f"{base}/create", json={"configuration": {**VOLUME, "size": "30GB"}})
    assert changed.status_code == 400 and "size: 20.0 -> 30.0" in changed.text
    assert client.post(f"{base}/delete", json={"names": ["nope"]}).status_code == 400
    assert client.post(f"{base}/delete", json={"names": ["data"], "oops": 1}).status_code == 422
    assert client.post(f"{base}/delete", json={"names": ["data"]}).status_code == 200
    _until(client, lambda: client.post(f"{base}/list").json() == [])
    assert [c[0] for c in client.cloud.calls] == ["create", "delete"]  # type: ignore[attr-defined]
    events = client.post("/api/events/list", json={"target_type": "volume"}).json()
    assert any(e["message"] == "Volume status changed SUBMITTED -> ACTIVE" for e in events)
