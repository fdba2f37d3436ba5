"""config.yml through a whole server start (the FastAPI app with its lifespan, a real SQLite):
the file is synced into the `backends` table with the secrets encrypted, each project sees its
own backends through the API with secrets redacted, a backend whose check fails is left out
with its reason while the server starts, writes are refused with where to configure instead,
and an invalid file stops `dstack server` before anything starts. The cloud is a test double
put in place of the AWS factory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dstack.api.client import APIClient
from dstack.server import backends
from dstack.server.app import create_app
from dstack.server.db import tables as t
from dstack.server.settings import Settings

from .test_server_config import Cloud

with warnings.catch_warnings():  # starlette would rather have httpx2 drive its test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = "admin-token-for-tests"
SECRET, KEY_ID = "wJalrXUtnFEMI-secret", "AKIAEXAMPLEKEY"


def _config(team_regions: str = "[eu-west-1]", secret: str = SECRET, team: bool = True) -> str:
    text = f"""\
projects:
- name: main
  backends:
  - type: aws
    creds: {{type: access_key, access_key: {KEY_ID}, secret_key: {secret}}}
    regions: [us-east-1]
    tags: {{team: ml}}
"""
    if team:
        text += f"""\
- name: team-a
  backends:
  - type: aws
    regions: {team_regions}
"""
    return text


@pytest.fixture
def server_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A server directory, and the AWS factory replaced: project team-a's credentials fail."""

    def factory(project_name: str, config: Any, *_: Any) -> Cloud:
        cloud = Cloud(project_name, "fail" if project_name == "team-a" else "ok")
        cloud.config = config  # type: ignore[attr-defined]
        return cloud

    monkeypatch.setitem(backends.FACTORIES, "aws", lambda: factory)
    (tmp_path / "config.yml").write_text(_config())
    return tmp_path


def _settings(server_dir: Path) -> Settings:
    return Settings(
        server_dir=server_dir,
        database_url=f"sqlite+aiosqlite:///{server_dir / 'db.sqlite'}",
        admin_token=TOKEN,
        local_backend_enabled=False,
        inventory_sweep_seconds=3600,
    )


def _start(server_dir: Path) -> TestClient:
    client = TestClient(create_app(_settings(server_dir)))
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    return client


@pytest.fixture
def client(server_dir: Path) -> Iterator[TestClient]:
    with _start(server_dir) as c:
        yield c


def _rows(client: TestClient) -> list[tuple[str, t.Backend]]:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]

    async def read() -> list[tuple[str, t.Backend]]:
        async with ctx.db.session() as s:
            q = select(t.Project.name, t.Backend).join(t.Project).order_by(t.Project.name)
            return [(name, row) for name, row in (await s.execute(q)).all()]

    return client.portal.call(read)  # type: ignore[union-attr]


def test_the_file_is_stored_with_its_secrets_encrypted(client: TestClient) -> None:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    rows = _rows(client)
    assert [(name, row.type) for name, row in rows] == [("main", "aws"), ("team-a", "aws")]
    main = rows[0][1]
    assert SECRET not in main.config and SECRET not in main.auth and KEY_ID not in main.auth
    assert json.loads(ctx.box.decrypt(main.auth)) == {
        "type": "access_key",
        "access_key": KEY_ID,
        "secret_key": SECRET,
    }
    assert json.loads(main.config)["creds"]["secret_key"] == "***"
    # The backend was built from the row, with the credentials decrypted.
    cloud = ctx.backends.get("aws", main.project_id)
    assert cloud.config.creds.secret_key == SECRET and cloud.config.tags == {"team": "ml"}


def test_a_failing_check_leaves_the_backend_out_and_the_server_starts(client: TestClient) -> None:
    lines = client.app.state.bootstrap.backends  # type: ignore[attr-defined]
    assert lines[0] == "Backends: ssh (all projects); aws (project main: us-east-1)"
    assert lines[1] == (
        "Backend aws (project team-a): not configured: "
        "AuthFailure: AWS was not able to validate the credentials"
    )
    team = client.post("/api/project/team-a/backends/list").json()
    aws = next(b for b in team if b["name"] == "aws")
    assert aws["status"] == "error" and aws["reason"].startswith("AuthFailure")
    assert aws["config"]["regions"] == ["eu-west-1"]
    assert client.get("/healthcheck").status_code == 200


def test_the_api_shows_each_projects_backends_redacted(client: TestClient) -> None:
    r = client.post("/api/project/main/backends/list")
    assert r.status_code == 200, r.text
    assert SECRET not in r.text and KEY_ID not in r.text
    by_name = {b["name"]: b for b in r.json()}
    assert by_name["ssh"]["server_wide"] is True
    aws = by_name["aws"]
    assert (aws["status"], aws["reason"], aws["server_wide"]) == ("ok", None, False)
    assert aws["config"]["creds"] == {
        "type": "access_key",
        "access_key": "***",
        "secret_key": "***",
    }
    info = client.post("/api/project/main/backends/aws/config_info")
    assert info.status_code == 200 and info.json() == aws
    yaml_answer = client.post("/api/project/main/backends/aws/get_yaml").json()
    assert "secret_key: '***'" in yaml_answer["config_yaml"] and SECRET not in str(yaml_answer)
    missing = client.post("/api/project/main/backends/gcp/config_info")
    assert missing.status_code == 400
    assert missing.json()["detail"][0]["code"] == "resource_not_exists"
    assert client.post("/api/backends/list_types").json() == ["aws", "slurm"]
    # The SDK's view of the same route.
    api = APIClient("http://testserver", TOKEN, "main")
    api._http = client
    assert [b.name for b in api.list_backends()] == ["ssh", "aws"]
    assert api.list_backend_types() == ["aws", "slurm"]


@pytest.mark.parametrize("action", ["create", "update", "delete", "create_yaml", "update_yaml"])
def test_writes_are_refused_saying_where_backends_are_configured(
    client: TestClient, action: str
) -> None:
    r = client.post(f"/api/project/main/backends/{action}", json={"name": "aws"})
    assert r.status_code == 400
    assert "configured in ~/.dstack/server/config.yml" in r.json()["detail"][0]["msg"]


def test_backends_need_a_token_and_a_project_the_caller_may_see(client: TestClient) -> None:
    anonymous = client.post("/api/project/main/backends/list", headers={"Authorization": ""})
    assert anonymous.status_code == 403
    assert client.post("/api/project/nosuch/backends/list").status_code == 400


def test_a_fleet_naming_a_backend_its_project_lacks_is_refused(client: TestClient) -> None:
    spec = {"configuration": {"type": "fleet", "name": "gpu", "nodes": "0..1", "backends": ["aws"]}}
    body = {"plan": {"spec": spec, "current_resource": None}, "force": False}
    r = client.post("/api/project/team-a/fleets/apply", json=body)
    assert r.status_code == 400
    msg = r.json()["detail"][0]["msg"]
    assert "backend aws is not configured on this server for project team-a" in msg
    assert "(configured: ssh)" in msg


def test_each_start_makes_the_table_match_the_file(server_dir: Path) -> None:
    with _start(server_dir) as c:
        first = {name: (row.id, row.updated_at) for name, row in _rows(c)}
    (server_dir / "config.yml").write_text(_config(team_regions="[eu-west-2]", secret="rotated"))
    with _start(server_dir) as c:
        rows = dict(_rows(c))
        box = c.app.state.ctx.box  # type: ignore[attr-defined]
        assert rows["team-a"].id == first["team-a"][0]  # updated in place
        assert json.loads(rows["team-a"].config)["regions"] == ["eu-west-2"]
        assert rows["team-a"].updated_at > first["team-a"][1]
        assert json.loads(box.decrypt(rows["main"].auth))["secret_key"] == "rotated"
    unchanged = {name: row.updated_at for name, row in rows.items()}
    (server_dir / "config.yml").write_text(_config(secret="rotated", team_regions="[eu-west-2]"))
    with _start(server_dir) as c:
        assert {name: row.updated_at for name, row in _rows(c)} == unchanged
    (server_dir / "config.yml").write_text(_config(secret="rotated", team=False))
    with _start(server_dir) as c:
        assert [name for name, _ in _rows(c)] == ["main"]  # team-a's backend is gone
        assert c.post("/api/project/team-a/backends/list").json()[0]["name"] == "ssh"
    (server_dir / "config.yml").unlink()
    with _start(server_dir) as c:
        assert _rows(c) == []


def test_projects_named_in_the_file_are_created_for_the_admin(client: TestClient) -> None:
    projects = client.post("/api/projects/list").json()
    team = next(p for p in projects if p["project_name"] == "team-a")
    assert team["owner"]["username"] == "admin"


def test_an_invalid_file_stops_the_start_and_changes_nothing(server_dir: Path) -> None:
    (server_dir / "config.yml").write_text("projects:\n- name: main\n  backends:\n  - type: gcp\n")
    with (
        pytest.raises(Exception, match=r"config.yml:4: .*gcp is not supported"),
        _start(server_dir),
    ):
        pass
    assert not (server_dir / "db.sqlite").exists()


def test_dstack_server_refuses_an_invalid_file_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text("projects:\n- name: main\n- name: main\n")
    env = {**os.environ, "DSTACK_SERVER_DIR": str(tmp_path), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "dstack.cli.main", "server", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert f"{tmp_path / 'config.yml'}:3: projects[1].name: duplicate project name main" in (
        proc.stderr
    ), proc.stderr
    assert not (tmp_path / "data").exists()
