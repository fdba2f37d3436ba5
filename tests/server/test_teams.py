"""Users and projects through the whole app (routes, services, the proxy's caller cache): the
invariants no role may break and deactivation taking effect at once."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.server.app import create_app
from dstack.server.services.crypto import hash_token
from dstack.server.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = "teams-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def c(tmp_path: Path) -> Iterator[TestClient]:
    (tmp_path / "config.yml").write_text("projects:\n- name: main\n")
    settings = Settings(
        server_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        admin_token=TOKEN, local_backend_enabled=False, inventory_sweep_seconds=3600,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def _post(c: TestClient, path: str, body: dict | None = None, token: str = TOKEN):  # noqa: ANN202
    return c.post(path, json=body or {}, headers={"Authorization": f"Bearer {token}"})


def _new_user(c: TestClient, name: str, role: str = "user") -> str:
    r = _post(c, "/api/users/create", {"username": name, "global_role": role})
    assert r.status_code == 200, r.text
    return r.json()["creds"]["token"]


def test_tokens_appear_only_where_created_or_rotated(c: TestClient) -> None:
    token = _new_user(c, "bob")
    for path, body in [("/api/users/list", {}), ("/api/users/get_user", {"username": "bob"})]:
        assert "creds" not in _post(c, path, body).text
    me = _post(c, "/api/users/get_my_user", token=token)
    assert me.status_code == 200 and "creds" not in me.json() and me.json()["username"] == "bob"
    rotated = _post(c, "/api/users/refresh_token", {"username": "bob"}).json()["creds"]["token"]
    assert _post(c, "/api/users/get_my_user", token=token).status_code == 403
    assert _post(c, "/api/users/get_my_user", token=rotated).status_code == 200


def test_names_are_validated_and_unique(c: TestClient) -> None:
    assert _post(c, "/api/users/create", {"username": "bad name"}).status_code == 422
    assert (
        _post(c, "/api/users/create", {"username": "x", "global_role": "root"}).status_code == 422
    )
    _new_user(c, "bob")
    r = _post(c, "/api/users/create", {"username": "bob"})
    assert r.status_code == 400 and "already exists" in r.text
    r = _post(c, "/api/projects/create", {"project_name": "main"})
    assert r.status_code == 400 and "already exists" in r.text


def test_the_server_keeps_an_active_admin(c: TestClient) -> None:
    for body in (
        {"username": "admin", "active": False},
        {"username": "admin", "global_role": "user"},
    ):
        r = _post(c, "/api/users/update", body)
        assert r.status_code == 400 and "only active global admin" in r.text
    r = _post(c, "/api/users/delete", {"users": ["admin"]})
    assert r.status_code == 400 and "only active global admin" in r.text


def test_deleted_user_frees_the_name_and_keeps_no_access(c: TestClient) -> None:
    token = _new_user(c, "bob")
    _post(c, "/api/projects/main/add_members",
          {"members": [{"username": "bob", "project_role": "user"}]})  # fmt: skip
    assert _post(c, "/api/users/delete", {"users": ["bob"]}).status_code == 200
    assert _post(c, "/api/users/get_my_user", token=token).status_code == 403
    names = [u["username"] for u in _post(c, "/api/users/list").json()]
    assert names == ["admin"]
    members = _post(c, "/api/projects/main/get").json()["members"]
    assert [m["user"]["username"] for m in members] == ["admin"]
    _new_user(c, "bob")  # the name is free again


def test_a_project_with_live_fleets_is_not_deleted(c: TestClient) -> None:
    _post(c, "/api/projects/create", {"project_name": "ml"})
    fleet = {"type": "fleet", "name": "fl", "nodes": 0}
    r = _post(c, "/api/project/ml/fleets/apply", {"plan": {"spec": {"configuration": fleet}}})
    assert r.status_code == 200, r.text
    r = _post(c, "/api/projects/delete", {"projects_names": ["ml"]})
    assert r.status_code == 400 and "still has 1 fleets" in r.text
    assert _post(c, "/api/project/ml/fleets/delete", {"names": ["fl"]}).status_code == 200


def test_project_delete_needs_its_admin_and_frees_the_name(c: TestClient) -> None:
    bob = _new_user(c, "bob")
    carol = _new_user(c, "carol")
    assert _post(c, "/api/projects/create", {"project_name": "mine"}, token=bob).status_code == 200
    r = _post(c, "/api/projects/delete", {"projects_names": ["mine"]}, token=carol)
    assert r.status_code == 400 and r.json()["detail"][0]["msg"] == "Project mine not found"
    assert (
        _post(c, "/api/projects/delete", {"projects_names": ["mine"]}, token=bob).status_code == 200
    )
    assert _post(c, "/api/projects/mine/get", token=bob).status_code == 400
    assert (
        _post(c, "/api/projects/create", {"project_name": "mine"}, token=carol).status_code == 200
    )


def test_deactivation_reaches_the_service_proxy_at_once(c: TestClient) -> None:
    token = _new_user(c, "bob")
    registry = c.app.state.proxy.registry
    caller = c.portal.call(registry.caller, hash_token(token))  # type: ignore[union-attr]
    assert caller is not None
    assert _post(c, "/api/users/update", {"username": "bob", "active": False}).status_code == 200
    assert c.portal.call(registry.caller, hash_token(token)) is None  # type: ignore[union-attr]
