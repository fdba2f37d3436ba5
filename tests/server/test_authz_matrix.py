"""The authorization matrix: every route of the server (from its OpenAPI schema, plus its
WebSocket routes) x every kind of caller, by real HTTP calls against the whole app, checked
against the one table in `server/authz.py`. A route without an entry fails here.

The expectations are written from the roles, not computed by `authz.decide`: a global admin
passes everything, a project's admin/manager/user pass rules up to their role, a member of
another project and a deactivated user pass nothing project-scoped."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute

from dstack.server import authz
from dstack.server.app import create_app
from dstack.server.routers.deps import enforce
from dstack.server.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketDenialResponse

ADMIN_TOKEN = "matrix-admin-token"
PERSONAS = ("admin", "padmin", "manager", "user", "outsider", "anonymous", "deactivated")
PASSES = {
    authz.Need.PUBLIC: set(PERSONAS),
    authz.Need.SIGNED_IN: {"admin", "padmin", "manager", "user", "outsider"},
    authz.Need.GLOBAL_ADMIN: {"admin"},
    authz.Need.METRICS: {"admin"},
    authz.Need.PROJECT_USER: {"admin", "padmin", "manager", "user"},
    authz.Need.PROJECT_MANAGER: {"admin", "padmin", "manager"},
    authz.Need.PROJECT_ADMIN: {"admin", "padmin"},
}


def _call(c: TestClient, token: str | None, path: str) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = c.post(path, json={}, headers=headers)
    return r.status_code, r.json() if r.content else {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict]]:
    d: Path = tmp_path_factory.mktemp("authz")
    (d / "config.yml").write_text("projects:\n- name: main\n")
    settings = Settings(
        server_dir=d, database_url=f"sqlite+aiosqlite:///{d / 'db.sqlite'}",
        admin_token=ADMIN_TOKEN, local_backend_enabled=False, inventory_sweep_seconds=3600,
    )  # fmt: skip
    with TestClient(create_app(settings)) as c:
        c.app.state.auth_limiter.max_failures = 10**6  # the matrix fails on purpose, a lot
        tokens = {"admin": ADMIN_TOKEN, "anonymous": None}
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for name in ("padmin", "manager", "user", "outsider", "deactivated"):
            r = c.post("/api/users/create", json={"username": name}, headers=admin)
            assert r.status_code == 200, r.text
            tokens[name] = r.json()["creds"]["token"]
        for project in ("team", "other"):
            r = c.post("/api/projects/create", json={"project_name": project}, headers=admin)
            assert r.status_code == 200, r.text
        members = [{"username": "padmin", "project_role": "admin"},
                   {"username": "manager", "project_role": "manager"},
                   {"username": "user", "project_role": "user"},
                   {"username": "deactivated", "project_role": "admin"}]  # fmt: skip
        r = c.post("/api/projects/team/add_members", json={"members": members}, headers=admin)
        assert r.status_code == 200, r.text
        other = [{"username": "outsider", "project_role": "admin"}]
        r = c.post("/api/projects/other/add_members", json={"members": other}, headers=admin)
        assert r.status_code == 200, r.text
        r = c.post("/api/users/update", json={"username": "deactivated", "active": False},
                   headers=admin)  # fmt: skip
        assert r.status_code == 200, r.text
        yield c, tokens


def _routes(c: TestClient) -> list[tuple[str, str]]:
    """The OpenAPI schema's routes plus those it leaves out (the web UI's files, Prometheus'
    /metrics, websockets): a route hidden from the schema still needs a rule."""
    out = {
        (method.upper(), path) for path, ops in c.app.openapi()["paths"].items() for method in ops
    }
    for r in c.app.routes:
        if isinstance(r, APIWebSocketRoute):
            out.add(("WS", r.path))
        elif isinstance(r, APIRoute):
            out |= {(m.upper(), r.path) for m in r.methods or () if m.upper() != "HEAD"}
    return sorted(out)


def _concrete(path: str) -> str:
    path = path.replace("{project_name}", "team")
    return re.sub(r"\{[^}]+\}", "x", path)


def _msg(body: object) -> str | None:
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail[0].get("msg") if isinstance(detail, list) and detail else None


def _denied(status: int, body: object, project: str = "team") -> bool:
    msg = _msg(body)
    return status in (401, 403, 429) or (status == 400 and msg == f"Project {project} not found")


def _request(c: TestClient, method: str, path: str, token: str | None) -> tuple[int, dict]:
    url = _concrete(path)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method == "WS":
        with (
            pytest.raises(WebSocketDenialResponse) as info,
            c.websocket_connect(url, headers=headers),
        ):
            pass
        return info.value.status_code, info.value.json()
    r = c.request(method, url, json={} if method == "POST" else None, headers=headers)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {}


def test_every_route_has_a_rule_and_passes_the_gate(server: tuple[TestClient, dict]) -> None:
    c, _ = server
    routes = _routes(c)
    assert len(routes) > 40
    missing = [f"{m} {p}" for m, p in routes if authz.rule_for(m, p) is None]
    assert not missing, f"routes without an entry in authz.RULES: {missing}"
    for r in c.app.routes:
        if isinstance(r, APIRoute | APIWebSocketRoute):
            calls = [d.call for d in r.dependant.dependencies]
            assert enforce in calls, f"{r.path} does not pass deps.enforce"


def test_the_matrix(server: tuple[TestClient, dict]) -> None:
    c, tokens = server
    wrong: list[str] = []
    for method, path in _routes(c):
        rule = authz.rule_for(method, path)
        assert rule is not None
        passes = set(PASSES[rule.need])
        if rule.self_service:
            passes.add("user")  # a member below manager reaches the handler (join/leave only)
        for persona in PERSONAS:
            status, body = _request(c, method, path, tokens[persona])
            denied = _denied(status, body)
            if denied == (persona in passes) or status >= 500:
                wrong.append(f"{method} {path} as {persona}: {status} {body}")
            if denied and persona in ("anonymous", "deactivated"):
                assert status == 403 and body["detail"][0]["code"] == "not_authenticated"
            is_project_rule = rule.need in authz.PROJECT_NEEDS
            if denied and persona == "outsider" and is_project_rule:
                # A project the caller is not in looks like one that does not exist.
                assert (status, body["detail"][0]["msg"]) == (400, "Project team not found")
    assert not wrong, "\n".join(wrong)


def test_unknown_wrong_and_deactivated_tokens_get_one_answer(
    server: tuple[TestClient, dict],
) -> None:
    c, tokens = server
    answers = {
        _call(c, token, "/api/users/get_my_user").__repr__()
        for token in ("nope", "x" * 43, tokens["deactivated"])
    }
    assert len(answers) == 1
    assert "Invalid token" in answers.pop()


def test_public_projects_can_be_seen_and_joined_not_used(server: tuple[TestClient, dict]) -> None:
    c, tokens = server
    admin, outsider = tokens["admin"], tokens["outsider"]
    h = {"Authorization": f"Bearer {admin}"}
    assert c.post("/api/projects/create", json={"project_name": "open", "is_public": True},
                  headers=h).status_code == 200  # fmt: skip
    seen = [p["project_name"] for p in _call(c, outsider, "/api/projects/list")[1]]
    assert "open" in seen and "team" not in seen
    assert _call(c, outsider, "/api/projects/open/get")[0] == 200
    assert _denied(*_call(c, outsider, "/api/project/open/runs/get"), project="open")
    # Joining as admin, or adding someone else, is not self-service.
    oh = {"Authorization": f"Bearer {outsider}"}
    join = "/api/projects/open/add_members"
    as_admin = {"members": [{"username": "outsider", "project_role": "admin"}]}
    assert c.post(join, json=as_admin, headers=oh).status_code == 403
    other = {"members": [{"username": "user", "project_role": "user"}]}
    assert c.post(join, json=other, headers=oh).status_code == 403
    me = {"members": [{"username": "outsider", "project_role": "user"}]}
    assert c.post(join, json=me, headers=oh).status_code == 200
    r = c.post("/api/project/open/fleets/list", json={}, headers=oh)
    assert r.status_code == 200
    # A plain member leaves; they cannot remove others.
    leave = "/api/projects/open/remove_members"
    assert c.post(leave, json={"usernames": ["admin"]}, headers=oh).status_code == 403
    assert c.post(leave, json={"usernames": ["outsider"]}, headers=oh).status_code == 200
    assert _denied(*_call(c, outsider, "/api/project/open/fleets/list"), project="open")


def test_a_manager_cannot_make_admins_and_a_project_keeps_one(
    server: tuple[TestClient, dict],
) -> None:
    c, tokens = server
    mh = {"Authorization": f"Bearer {tokens['manager']}"}
    promote = {"members": [{"username": "user", "project_role": "admin"}]}
    r = c.post("/api/projects/team/add_members", json=promote, headers=mh)
    assert r.status_code == 400 and "Only a project admin" in r.text
    r = c.post("/api/projects/team/remove_members", json={"usernames": ["padmin"]}, headers=mh)
    assert r.status_code == 400 and "Only a project admin" in r.text


def test_fleets_on_hosts_the_project_does_not_rent_need_project_admin(
    server: tuple[TestClient, dict],
) -> None:
    c, tokens = server
    conf = {"type": "fleet", "name": "mine", "ssh_config": {"hosts": ["10.0.0.1"], "user": "u"}}
    body = {"plan": {"spec": {"configuration": conf}}}
    uh = {"Authorization": f"Bearer {tokens['user']}"}
    r = c.post("/api/project/team/fleets/apply", json=body, headers=uh)
    assert r.status_code == 403 and "requires the admin role" in r.text


def test_failed_authentication_is_limited_per_address(server: tuple[TestClient, dict]) -> None:
    c, tokens = server
    limiter = c.app.state.auth_limiter
    old = limiter.max_failures
    limiter.max_failures = 3
    try:
        limiter._failures.clear()
        statuses = [_call(c, "wrong", "/api/runs/list")[0] for _ in range(4)]
        assert statuses == [403, 403, 403, 429]
        r = c.post("/api/runs/list", json={}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        # No token at all is not a guess: it does not count.
        limiter._failures.clear()
        assert {_call(c, None, "/api/runs/list")[0] for _ in range(5)} == {403}
        assert _call(c, ADMIN_TOKEN, "/api/runs/list")[0] == 200
    finally:
        limiter.max_failures = old
        limiter._failures.clear()


def test_metrics_rule_for_the_prometheus_route() -> None:
    """The rules of the routes that hold no project data or only an admin's, decided alone."""
    rule = authz.rule_for("GET", "/metrics")
    assert rule is not None and rule.need is authz.Need.METRICS
    admin, member = authz.Caller(global_admin=True), authz.Caller(False, "admin")
    assert authz.decide(rule, admin) is authz.Verdict.ALLOW
    assert authz.decide(rule, member) is authz.Verdict.FORBIDDEN
    assert authz.decide(rule, None) is authz.Verdict.NOT_AUTHENTICATED
    assert authz.decide(rule, None, metrics_public=True) is authz.Verdict.ALLOW
    for path in ("/", "/ui/{asset:path}"):
        assert authz.decide(authz.rule_for("GET", path), None) is authz.Verdict.ALLOW
    secrets = "/api/project/{project_name}/secrets"
    user = authz.Caller(False, "user")
    assert authz.decide(authz.rule_for("POST", f"{secrets}/list"), user) is authz.Verdict.ALLOW
    for action in ("get", "create_or_update", "delete"):
        verdict = authz.decide(authz.rule_for("POST", f"{secrets}/{action}"), user)
        assert verdict is authz.Verdict.FORBIDDEN
