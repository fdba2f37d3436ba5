"""Secrets through a whole server start (the FastAPI app, a real SQLite): the routes and who
may use them, events without values, the value absent in clear from the database file and
from every answer, a run naming a missing secret refused at apply, `${{ secrets.NAME }}` kept
in the run and filled only in the agent's request, the state directory private, and keys:
rotation keeps old values readable, a missing or changed key stops the start naming it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.models.wire import utcnow
from dstack.server.app import create_app
from dstack.server.db import tables as t
from dstack.server.services import secrets as svc
from dstack.server.services.users import create_user
from dstack.server.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = "admin-token-for-secret-tests"
SENTINEL = "sentinel-Zq8vKp3Xw-value"


def _settings(server_dir: Path) -> Settings:
    return Settings(
        server_dir=server_dir,
        database_url=f"sqlite+aiosqlite:///{server_dir / 'data' / 'sqlite.db'}",
        admin_token=TOKEN,
        local_backend_enabled=False,
        inventory_sweep_seconds=3600,
    )


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _keys(server_dir: Path, *keys: tuple[str, str]) -> None:
    lines = ["encryption:", "  keys:"]
    for name, secret in keys:
        lines += ["  - type: aes", f"    name: {name}", f"    secret: {secret}"]
    (server_dir / "config.yml").write_text("\n".join(lines) + "\n")


def _start(server_dir: Path, token: str = TOKEN) -> TestClient:
    client = TestClient(create_app(_settings(server_dir)))
    client.headers["Authorization"] = f"Bearer {token}"
    return client


@pytest.fixture
def server_dir(tmp_path: Path) -> Path:
    d = tmp_path / "server"
    d.mkdir()
    _keys(d, ("k1", _key()))
    return d


@pytest.fixture
def client(server_dir: Path) -> Iterator[TestClient]:
    with _start(server_dir) as c:
        yield c


def _p(route: str) -> str:
    return f"/api/project/main/secrets/{route}"


def _member(client: TestClient, role: str) -> str:
    """A user with `role` in project main; returns their token."""
    ctx = client.app.state.ctx  # type: ignore[attr-defined]

    async def add() -> str:
        async with ctx.db.session() as s:
            user, token = await create_user(s, f"u-{role}-{uuid.uuid4().hex[:6]}")
            await s.flush()
            main = await s.scalar(t.Project.__table__.select().where(t.Project.name == "main"))
            s.add(t.Member(project_id=main, user_id=user.id, project_role=role))
            await s.commit()
            return token

    return client.portal.call(add)  # type: ignore[union-attr]


def test_set_list_get_delete_and_events_without_values(client: TestClient) -> None:
    r = client.post(_p("create_or_update"), json={"name": "hf_token", "value": SENTINEL})
    assert r.status_code == 200, r.text
    assert SENTINEL not in r.text
    client.post(_p("create_or_update"), json={"name": "hf_token", "value": SENTINEL + "2"})
    listed = client.post(_p("list")).json()
    assert [s["name"] for s in listed] == ["hf_token"] and listed[0]["value"] is None
    got = client.post(_p("get"), json={"name": "hf_token"}).json()
    assert got["value"] == SENTINEL + "2"
    r = client.post(_p("get"), json={"name": "nope"})
    assert r.status_code == 400 and "Secret nope not found" in r.text
    r = client.post(_p("delete"), json={"secrets_names": ["hf_token", "nope"]})
    assert r.status_code == 400 and "nope" in r.text  # all or nothing
    assert client.post(_p("list")).json() != []
    assert client.post(_p("delete"), json={"secrets_names": ["hf_token"]}).status_code == 200
    assert client.post(_p("list")).json() == []
    events = client.post("/api/events/list", json={"project_name": "main"}).json()
    secret_events = [e["message"] for e in events if e["targets"][0]["type"] == "secret"]
    assert secret_events == ["Secret created", "Secret updated", "Secret deleted"]
    assert SENTINEL not in json.dumps(events)


def test_bad_requests_never_echo_the_value(client: TestClient) -> None:
    r = client.post(_p("create_or_update"), json={"value": SENTINEL})
    assert r.status_code == 400 and "needs a `name`" in r.text and SENTINEL not in r.text
    r = client.post(_p("create_or_update"), json={"name": "a b", "value": SENTINEL})
    assert r.status_code == 400 and "invalid secret name" in r.text and SENTINEL not in r.text
    r = client.post(_p("create_or_update"), json={"name": "big", "value": "x" * 70000})
    assert r.status_code == 400 and "longer than" in r.text


def test_users_list_names_managers_and_admins_read_and_write(client: TestClient) -> None:
    client.post(_p("create_or_update"), json={"name": "k", "value": SENTINEL})
    user = {"Authorization": f"Bearer {_member(client, 'user')}"}
    manager = {"Authorization": f"Bearer {_member(client, 'manager')}"}
    assert client.post(_p("list"), headers=user).json()[0]["name"] == "k"
    for route, body in (
        ("get", {"name": "k"}),
        ("create_or_update", {"name": "k", "value": "v"}),
        ("delete", {"secrets_names": ["k"]}),
    ):
        r = client.post(_p(route), json=body, headers=user)
        assert r.status_code == 403 and "manager role" in r.text, route
        assert SENTINEL not in r.text
    assert client.post(_p("get"), json={"name": "k"}, headers=manager).json()["value"] == SENTINEL
    r = client.post(_p("create_or_update"), json={"name": "m", "value": "v"}, headers=manager)
    assert r.status_code == 200
    assert client.post(_p("list"), headers={"Authorization": "Bearer nope"}).status_code == 403


def _task(env: list[str], ssh_key_pub: str | None = None) -> dict:
    spec = {
        "run_name": f"r{uuid.uuid4().hex[:6]}",
        "configuration": {"type": "task", "commands": ["env"], "env": env},
        "ssh_key_pub": ssh_key_pub,
    }
    return {"plan": {"run_spec": spec}, "force": False}


def test_a_run_naming_a_missing_secret_is_refused_at_apply(client: TestClient) -> None:
    r = client.post("/api/project/main/runs/apply", json=_task(["A=${{ secrets.absent }}"]))
    assert r.status_code == 400 and "secret absent" in r.text
    r = client.post("/api/project/main/runs/apply", json=_task(["A=1"], "ssh-rsa !!"))
    assert r.status_code == 400 and "invalid ssh_key_pub" in r.text


def test_the_run_keeps_the_reference_and_only_the_agent_request_gets_the_value(
    client: TestClient,
) -> None:
    client.post(_p("create_or_update"), json={"name": "tok", "value": SENTINEL})
    r = client.post("/api/project/main/runs/apply", json=_task(["T=Bearer ${{ secrets.tok }}"]))
    assert r.status_code == 200, r.text
    name = r.json()["run_spec"]["run_name"]
    got = client.post("/api/project/main/runs/get", json={"run_name": name})
    listed = client.post("/api/runs/list", json={})
    for answer in (r.text, got.text, listed.text):
        assert SENTINEL not in answer
    assert "${{ secrets.tok }}" in got.text
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    body = {"env": {"T": "Bearer ${{ secrets.tok }}", "P": "$$"}, "registry_auth": None}
    filled = client.portal.call(svc.resolve_job, ctx, _project_id(client), body)  # type: ignore[union-attr]
    assert filled["env"] == {"T": f"Bearer {SENTINEL}", "P": "$$"}
    assert body["env"]["T"] == "Bearer ${{ secrets.tok }}"  # the original is untouched


def _project_id(client: TestClient) -> str:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]

    async def read() -> str:
        async with ctx.db.session() as s:
            return await s.scalar(t.Project.__table__.select().where(t.Project.name == "main"))

    return client.portal.call(read)  # type: ignore[union-attr]


def test_the_value_is_not_in_the_database_file_and_the_directory_is_private(
    server_dir: Path,
) -> None:
    with _start(server_dir) as c:
        c.post(_p("create_or_update"), json={"name": "k", "value": SENTINEL})
    data = server_dir / "data"
    for f in data.iterdir():
        assert SENTINEL.encode() not in f.read_bytes(), f
    mode = lambda p: oct(p.stat().st_mode & 0o777)  # noqa: E731
    assert mode(server_dir) == mode(data) == "0o700"
    assert mode(data / "sqlite.db") == mode(data / "encryption.key") == "0o600"
    assert mode(server_dir / "config.yml") == "0o600"


def test_existing_loose_modes_are_fixed_at_start(server_dir: Path) -> None:
    logs = server_dir / "projects" / "main" / "logs" / "run" / "job.log"
    logs.parent.mkdir(parents=True)
    logs.write_text("output")
    os.chmod(logs, 0o644)
    os.chmod(server_dir, 0o755)
    with _start(server_dir):
        pass
    assert oct(logs.stat().st_mode & 0o777) == "0o600"
    assert oct(server_dir.stat().st_mode & 0o777) == "0o700"


def test_rotation_and_a_missing_or_changed_key_at_start(server_dir: Path) -> None:
    old = _key()
    _keys(server_dir, ("old", old))
    with _start(server_dir) as c:
        c.post(_p("create_or_update"), json={"name": "a", "value": "from-old"})
    _keys(server_dir, ("new", _key()), ("old", old))
    with _start(server_dir) as c:
        assert c.post(_p("get"), json={"name": "a"}).json()["value"] == "from-old"
        c.post(_p("create_or_update"), json={"name": "b", "value": "from-new"})
    raw = asyncio.run(_stored(server_dir))
    assert raw["a"].startswith("enc:aes:old:") and raw["b"].startswith("enc:aes:new:")
    _keys(server_dir, ("new2", _key()))
    missing = r"config.yml: .*secret a of project main.*key 'old'"
    with pytest.raises(Exception, match=missing), _start(server_dir):
        pass
    _keys(server_dir, ("old", _key()), ("new", _key()))
    changed = r"key 'old' \(type aes\) cannot decrypt"
    with pytest.raises(Exception, match=changed), _start(server_dir):
        pass


async def _stored(server_dir: Path) -> dict[str, str]:
    from sqlalchemy import select

    from dstack.server.db.session import Database

    db = Database(_settings(server_dir).database_url)
    async with db.session() as s:
        rows = (await s.execute(select(t.Secret.name, t.Secret.value))).all()
    await db.close()
    return dict(rows)


def test_a_stored_value_written_without_prefix_by_the_old_box_is_read(server_dir: Path) -> None:
    """Backend credentials and agent tokens written before keys were configurable."""
    from cryptography.fernet import Fernet

    with _start(server_dir) as c:
        ctx = c.app.state.ctx  # type: ignore[attr-defined]
        key = (server_dir / "data" / "encryption.key").read_bytes().strip()
        bare = Fernet(key).encrypt(b"legacy-value").decode()
        assert ctx.box.decrypt(bare) == "legacy-value"
        assert utcnow()  # the app is up with a configured aes key


def test_the_plan_refuses_what_the_apply_would(client: TestClient) -> None:
    body = _task(["A=${{ secrets.absent }}"])["plan"]
    r = client.post("/api/project/main/runs/get_plan", json=body)
    assert r.status_code == 400 and "secret absent" in r.text
