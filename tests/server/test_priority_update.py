"""`priority` is updatable in place: re-applying a run with only its priority changed keeps the
run (and its place in the queue's age order) and changes the order jobs are claimed in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app_client import TestClient, app_client

TOKEN = "admin-token-for-priority"
BASE = "/api/project/main/runs"
# Nothing can run it (no backend): without a retry the reconcilers end it in one pass each,
# which can be before the second request. Retrying for capacity, it stays active (queued).
QUEUED = {"type": "task", "commands": ["sleep 1"], "retry": {"on_events": ["no-capacity"]}}


@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    with app_client(tmp_path, TOKEN) as c:
        yield c


def _apply(client: TestClient, conf: dict[str, Any], current: Any = None) -> Any:
    spec = {"run_name": "queued", "configuration": conf}
    body = {"plan": {"run_spec": spec, "current_resource": current}, "force": False}
    return client.post(f"{BASE}/apply", json=body)


def test_reapply_with_a_new_priority_updates_the_queued_run(client: TestClient) -> None:
    conf = {**QUEUED, "priority": 10}
    first = _apply(client, conf)
    assert first.status_code == 200, first.text
    again = _apply(client, {**conf, "priority": 90}, first.json())
    assert again.status_code == 200, again.text
    run = again.json()
    assert run["id"] == first.json()["id"]
    assert run["run_spec"]["configuration"]["priority"] == 90
    events = client.post("/api/events/list", json={"project_name": "main"}).json()
    assert any("priority changed from 10 to 90" in e.get("message", "") for e in events), events


def test_any_other_change_is_not_a_priority_update(client: TestClient) -> None:
    conf = {**QUEUED, "priority": 10}
    first = _apply(client, conf)
    other = _apply(client, {**conf, "priority": 90, "commands": ["sleep 2"]}, first.json())
    assert other.status_code == 400 and "already active" in other.text
