"""`dstack user` and the server subcommands of `dstack project`, run through the CLI's `main`
against a test double of the API client (the server side: tests/server/test_authz_matrix.py)."""

from __future__ import annotations

from typing import Any

import pytest

from dstack.api.client import ServerError
from dstack.cli.main import main
from dstack.models.users import Member, Project, User, UserTokenCreds


def _user(name: str, role: str = "user", active: bool = True, token: str | None = None) -> User:
    creds = UserTokenCreds(token=token) if token else None
    return User(id=f"id-{name}", username=name, global_role=role, active=active, creds=creds)


class FakeAPI:
    project = "main"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.refuse: str | None = None

    def __enter__(self) -> FakeAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _record(self, call: str, arg: Any) -> None:
        self.calls.append((call, arg))
        if self.refuse:
            raise ServerError(self.refuse, status_code=403)

    def list_users(self) -> list[User]:
        self._record("list_users", None)
        return [_user("admin", "admin"), _user("bob", active=False)]

    def get_user(self, username: str) -> User:
        self._record("get_user", username)
        return _user(username)

    def create_user(self, username: str, role: str, email: str | None) -> User:
        self._record("create_user", (username, role, email))
        return _user(username, role, token="tok-123")

    def update_user(self, username: str, **fields: Any) -> User:
        self._record("update_user", (username, fields))
        return _user(username, active=fields.get("active", True))

    def refresh_token(self, username: str) -> User:
        self._record("refresh_token", username)
        return _user(username, token="tok-new")

    def delete_users(self, names: list[str]) -> None:
        self._record("delete_users", names)

    def _project(self, name: str, public: bool = False) -> Project:
        members = [Member(user=_user("admin", "admin"), project_role="admin"),
                   Member(user=_user("bob"), project_role="manager")]  # fmt: skip
        return Project(project_id="p", project_name=name, members=members, is_public=public)

    def create_project(self, name: str, is_public: bool = False) -> Project:
        self._record("create_project", (name, is_public))
        return self._project(name, is_public)

    def update_project(self, name: str, is_public: bool) -> Project:
        self._record("update_project", (name, is_public))
        return self._project(name, is_public)

    def delete_projects(self, names: list[str]) -> None:
        self._record("delete_projects", names)

    def get_project(self, name: str) -> Project:
        self._record("get_project", name)
        return self._project(name)

    def add_members(self, name: str, members: list[dict[str, str]]) -> Project:
        self._record("add_members", (name, members))
        return self._project(name)

    def remove_members(self, name: str, names: list[str]) -> Project:
        self._record("remove_members", (name, names))
        return self._project(name)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeAPI:
    fake = FakeAPI()
    monkeypatch.setattr("dstack.cli.common.api_client", lambda args: fake)
    monkeypatch.setenv("COLUMNS", "200")
    return fake


def test_user_list_and_get(api: FakeAPI, capsys: Any) -> None:
    assert main(["user"]) == 0
    text = capsys.readouterr().out
    assert "USERNAME" in text and "ACTIVE" in text
    lines = [line for line in text.splitlines() if "bob" in line]
    assert lines and "no" in lines[0]
    assert main(["user", "get", "carol"]) == 0
    assert api.calls[-1] == ("get_user", "carol")


def test_user_create_prints_the_token_once(api: FakeAPI, capsys: Any) -> None:
    assert main(["user", "create", "carol", "--admin", "--email", "c@x.org"]) == 0
    assert api.calls[-1] == ("create_user", ("carol", "admin", "c@x.org"))
    out = capsys.readouterr().out
    assert out.count("tok-123") == 1 and "dstack project add" in out
    assert main(["user", "refresh-token", "carol"]) == 0
    assert "tok-new" in capsys.readouterr().out


def test_user_update_sends_only_what_changes(api: FakeAPI, capsys: Any) -> None:
    assert main(["user", "update", "bob", "--deactivate"]) == 0
    assert api.calls[-1] == ("update_user", ("bob", {"active": False}))
    assert main(["user", "update", "bob", "--role", "admin", "--activate"]) == 0
    assert api.calls[-1] == ("update_user", ("bob", {"global_role": "admin", "active": True}))
    assert main(["user", "update", "bob"]) == 1
    assert "Nothing to change" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["user", "update", "bob", "--activate", "--deactivate"])


def test_user_delete_asks_unless_yes(api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dstack.cli.common.confirm", lambda q, default_yes=None: False)
    assert main(["user", "delete", "bob"]) == 0
    assert not api.calls
    assert main(["user", "delete", "bob", "-y"]) == 0
    assert api.calls == [("delete_users", ["bob"])]


def test_a_refusal_prints_the_servers_reason(api: FakeAPI, capsys: Any) -> None:
    api.refuse = "Requires the global admin role"
    assert main(["user", "list"]) == 1
    assert "Requires the global admin role" in capsys.readouterr().err


def test_project_server_subcommands(api: FakeAPI, capsys: Any) -> None:
    assert main(["project", "create", "ml", "--public"]) == 0
    assert api.calls[-1] == ("create_project", ("ml", True))
    assert "Project ml created (public)" in capsys.readouterr().out
    assert main(["project", "update", "ml", "--private"]) == 0
    assert api.calls[-1] == ("update_project", ("ml", False))
    assert main(["project", "add-member", "ml", "bob", "--role", "manager"]) == 0
    assert api.calls[-1] == ("add_members", ("ml", [{"username": "bob",
                                                     "project_role": "manager"}]))  # fmt: skip
    text = capsys.readouterr().out
    assert "bob" in text and "manager" in text
    assert main(["project", "remove-member", "ml", "bob"]) == 0
    assert api.calls[-1] == ("remove_members", ("ml", ["bob"]))
    assert main(["project", "members", "ml"]) == 0
    assert api.calls[-1] == ("get_project", "ml")
    assert main(["project", "destroy", "ml", "-y"]) == 0
    assert api.calls[-1] == ("delete_projects", ["ml"])
    with pytest.raises(SystemExit):
        main(["project", "update", "ml"])  # --public or --private is required
    with pytest.raises(SystemExit):
        main(["project", "add-member", "ml", "bob", "--role", "owner"])


def test_help_teaches_the_commands(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["user", "--help"])
    text = capsys.readouterr().out
    for word in ("create", "refresh-token", "--deactivate", "delete"):
        assert word in text
    with pytest.raises(SystemExit):
        main(["project", "--help"])
    text = capsys.readouterr().out
    assert "destroy" in text and "only forgets it" in text
