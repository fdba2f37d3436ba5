"""The request guard's session (the token lookup, before the body is read) is the route's
session for a JSON request: one session a request, closed when the request is done with it,
whatever the outcome."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from app_client import TestClient, app_client

TOKEN = "admin-token-for-guard-sessions"


@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    with app_client(tmp_path, TOKEN) as c:
        yield c


def _for_a_request() -> bool:
    """Opened by the request's code (the guard, a route's dependencies), not a background
    loop of the same server."""
    return any(
        f.filename.endswith(("/server/guard.py", "/routers/deps.py"))
        for f in traceback.extract_stack()
    )


class Counted:
    """Counts the sessions the server's database opens for requests, and how many of those
    are open."""

    def __init__(self, client: TestClient) -> None:
        self.db = client.app.state.ctx.db  # type: ignore[attr-defined]
        self.opened = 0
        self.open = 0
        inner = self.db.session

        @asynccontextmanager
        async def session():  # noqa: ANN202
            counted = _for_a_request()
            self.opened += counted
            self.open += counted
            try:
                async with inner() as s:
                    yield s
            finally:
                self.open -= counted

        self.db.session = session


def test_a_json_request_uses_one_session(client: TestClient) -> None:
    counted = Counted(client)
    r = client.post("/api/users/get_my_user", json={})
    assert r.status_code == 200, r.text
    body = {"plan": {"run_spec": {"run_name": "x", "configuration": {"type": "task"}}}}
    r = client.post("/api/project/main/runs/apply", json=body)
    assert r.status_code == 400, r.text  # refused by the service, in the same session
    assert counted.opened == 2 and counted.open == 0


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/nowhere", 404),  # no route: nothing takes the session
        ("/api/project/nowhere/volumes/list", 400),  # the path's project does not exist
        ("/api/project/main/runs/get", 422),  # the body is refused before the route runs
    ],
)
def test_the_guard_session_is_closed_whatever_answers(
    client: TestClient, path: str, status: int
) -> None:
    counted = Counted(client)
    r = client.post(path, json={"unexpected": [1]})
    assert r.status_code == status, r.text
    assert counted.open == 0


def test_a_refused_token_opens_nothing_that_stays_open(client: TestClient) -> None:
    counted = Counted(client)
    bad = {"Authorization": "Bearer x"}
    r = client.post("/api/project/main/volumes/list", json={}, headers=bad)
    assert r.status_code == 403, r.text
    assert counted.open == 0


def test_the_project_read_with_the_token_is_the_gates_answer(client: TestClient) -> None:
    """A member's project route works from the guard's one query; a project that does not
    exist is hidden exactly as before."""
    r = client.post("/api/project/main/volumes/list", json={})
    assert r.status_code == 200, r.text
    r = client.post("/api/project/other/volumes/list", json={})
    assert r.status_code == 400 and "Project other not found" in r.text, r.text
