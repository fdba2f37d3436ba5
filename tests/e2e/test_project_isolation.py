"""The local backend runs jobs on the server's own machine as the server's OS user, next to its
data and the admin token: it serves one project (`main`) and no other project can reach it, by
any fleet. Two projects using one server never restart the local agent."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from .harness import Server, write_config
from .services_util import service, service_dir, wait_serving
from .test_runs import task


def add_member(srv: Server, user: str, project: str) -> str:
    """A user who is the admin of a project of their own and a member of nothing else, made the
    way an admin does it: `dstack user create`, then the user's `dstack project create`."""
    r = srv.cli("user", "create", user)
    assert r.returncode == 0, r.stdout + r.stderr
    token = re.search(r"shown only now\): (\S+)", r.stdout).group(1)  # type: ignore[union-attr]
    env = {"DSTACK_SERVER_URL": srv.url, "DSTACK_TOKEN": token, "DSTACK_PROJECT": "main"}
    r = srv.cli("project", "create", project, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    added = srv.cli("project", "add", "--name", project, "--url", srv.url, "--token", token, "-n")
    assert added.returncode == 0, added.stdout + added.stderr
    return token


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    srv = Server(home=tmp_path_factory.mktemp("isolation-home"))
    srv.home.mkdir(exist_ok=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.cleanup()


def test_a_second_project_never_gets_the_servers_machine(shared: Server, project_dir: Path):
    srv = shared
    bob = add_member(srv, "bob", "team")
    marker = project_dir / "escaped"
    # A fleet with no `backends` means "any backend": it must still not mean the local one.
    write_config(project_dir, "fleet.dstack.yml", "type: fleet\nname: anything\nnodes: 0..2\n")
    r = srv.cli("apply", "-f", "fleet.dstack.yml", "-y", "--project", "team", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    write_config(
        project_dir, "t.dstack.yml", task("escape", f"touch {marker}", "cat ~/.dstack/config.yml")
    )
    r = srv.cli("apply", "-f", "t.dstack.yml", "-y", "--project", "team", cwd=project_dir)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "serves only project main" in out, out
    assert not marker.exists()
    fleet = srv.api("/api/project/team/fleets/get", {"name": "anything"}, token=bob).json()
    assert fleet["instances"] == []
    # The refusal is in the run's record too, for `ps -v` and `dstack event`.
    run = srv.api("/api/project/team/runs/get", {"run_name": "escape"}, token=bob).json()
    sub = run["jobs"][0]["job_submissions"][-1]
    assert sub["termination_reason"] == "failed_to_start_due_to_no_capacity", sub
    assert "serves only project main" in sub["termination_reason_message"]


def test_a_fleet_naming_a_backend_it_cannot_have_is_refused(shared: Server, project_dir: Path):
    srv = shared
    if "team" not in srv.cli("project", "list").stdout:
        add_member(srv, "bob", "team")
    # `local` may be named, but it serves only the project that owns it (the server's machine).
    fleet = "type: fleet\nname: mine\nnodes: 0..1\nbackends: [{}]\n"
    write_config(project_dir, "f.dstack.yml", fleet.format("local"))
    r = srv.cli("apply", "-f", "f.dstack.yml", "-y", "--project", "team", cwd=project_dir)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "backend local serves only project main" in out, out
    assert "project team cannot use it" in out, out
    # A backend this server does not have is refused, not silently dropped.
    write_config(project_dir, "g.dstack.yml", fleet.format("aws"))
    r = srv.cli("apply", "-f", "g.dstack.yml", "-y", "--project", "team", cwd=project_dir)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "backend aws is not configured on this server" in out, out
    assert srv.api("/api/project/team/fleets/list", {}, token=None).status_code in (200, 403)


def test_two_projects_never_restart_the_local_agent(shared: Server, project_dir: Path):
    srv = shared
    if "team" not in srv.cli("project", "list").stdout:
        add_member(srv, "bob", "team")
    write_config(project_dir, "a.dstack.yml", task("mine-1", "echo one"))
    r = srv.cli("apply", "-f", "a.dstack.yml", "-y", "--project", "main", cwd=project_dir)
    assert r.returncode == 0 and "one" in r.stdout, r.stdout + r.stderr
    agent = srv.agent_pid()
    assert agent
    write_config(project_dir, "b.dstack.yml", task("theirs", "echo two"))
    r = srv.cli("apply", "-f", "b.dstack.yml", "-y", "--project", "team", cwd=project_dir)
    assert r.returncode != 0
    write_config(project_dir, "c.dstack.yml", task("mine-2", "echo three"))
    r = srv.cli("apply", "-f", "c.dstack.yml", "-y", "--project", "main", cwd=project_dir)
    assert r.returncode == 0 and "three" in r.stdout, r.stdout + r.stderr
    assert srv.agent_pid() == agent
    instances = srv.api("/api/project/main/fleets/get", {"name": "local"}).json()["instances"]
    assert len(instances) == 1, instances


def _not_found(r: httpx.Response, what: str) -> bool:
    return r.status_code == 400 and r.json()["detail"][0]["msg"] == f"{what} not found"


def _team(srv: Server) -> str:
    """bob and his project `team` (made by an earlier test, or now); his token, rotated by the
    admin when bob exists already (a token is shown only once)."""
    if "team" not in srv.cli("project", "list").stdout:
        return add_member(srv, "bob", "team")
    r = srv.cli("user", "refresh-token", "bob")
    token = re.search(r"shown only now\): (\S+)", r.stdout).group(1)  # type: ignore[union-attr]
    srv.cli("project", "add", "--name", "team", "--url", srv.url, "--token", token, "-n")
    return token


def test_two_teams_see_and_touch_nothing_of_each_other(
    shared: Server, project_dir: Path, tmp_path: Path
):
    srv = shared
    bob = _team(srv)
    # Team main (the admin) has a service and a finished task; team `team` (bob) has a fleet.
    d = service_dir(tmp_path)
    write_config(d, "svc.dstack.yml", service("private-svc"))
    r = srv.cli("apply", "-f", "svc.dstack.yml", "-y", "-d", cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    write_config(project_dir, "t.dstack.yml", task("admins-task", "echo secret-output"))
    r = srv.cli("apply", "-f", "t.dstack.yml", "-y", "--project", "main", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    write_config(project_dir, "bf.dstack.yml", "type: fleet\nname: bobs\nnodes: 0..1\n")
    r = srv.cli("apply", "-f", "bf.dstack.yml", "-y", "--project", "team", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_serving(srv, "private-svc")
    run = srv.run("admins-task")
    job_id = run["jobs"][0]["job_submissions"][-1]["id"]
    local = srv.api("/api/project/main/fleets/get", {"name": "local"}).json()
    bobs = srv.api("/api/project/team/fleets/get", {"name": "bobs"}, token=bob).json()

    # Lists across projects show only the caller's own.
    runs = srv.api("/api/runs/list", {}, token=bob).json()
    assert all(r["project_name"] == "team" for r in runs), runs
    fleets = [f["name"] for f in srv.api("/api/fleets/list", {}, token=bob).json()]
    assert "local" not in fleets and "bobs" in fleets
    assert "admins-task" not in srv.cli("ps", "-a", "--project", "team").stdout
    names = [p["project_name"] for p in srv.api("/api/projects/list", {}, token=bob).json()]
    assert names == ["team"]
    # The other project by name: as if it did not exist.
    for path, body in [
        ("/api/project/main/runs/get", {"run_name": "admins-task"}),
        ("/api/project/main/runs/stop", {"runs_names": ["private-svc"]}),
        ("/api/project/main/logs/poll", {"run_name": "admins-task", "job_submission_id": job_id}),
        ("/api/project/main/fleets/delete", {"names": ["local"]}),
        ("/api/project/main/backends/list", {}),
        ("/api/projects/main/get", {}),
        ("/api/runs/list", {"project_name": "main"}),
        ("/api/events/list", {"project_name": "main"}),
    ]:
        assert _not_found(srv.api(path, body, token=bob), "Project main"), path
    # ... and by id, through bob's own project.
    r = srv.api("/api/project/team/runs/get", {"id": run["id"]}, token=bob)
    assert _not_found(r, f"Run {run['id']}")
    r = srv.api("/api/project/team/fleets/get", {"id": local["id"]}, token=bob)
    assert r.status_code == 400 and "does not exist" in r.text
    body = {"run_name": "admins-task", "job_submission_id": job_id}
    assert srv.api("/api/project/team/logs/poll", body, token=bob).status_code == 400
    events = srv.api("/api/events/list", {"project_name": "team"}, token=bob).json()
    assert not any("admins-task" in json.dumps(e) or e.get("target_name") == "local"
                   for e in events)  # fmt: skip
    # The admin's service refuses bob's token; the admin's own passes.
    url = f"{srv.url}/proxy/services/main/private-svc/"
    r = httpx.get(url, headers={"Authorization": f"Bearer {bob}"}, timeout=10)
    assert r.status_code == 403, r.text
    r = httpx.get(url, headers={"Authorization": f"Bearer {srv.token}"}, timeout=10)
    assert r.status_code == 200, r.text
    # The other way round: the admin's team sees bob's fleet only as a global admin would.
    assert srv.api("/api/project/main/fleets/get", {"id": bobs["id"]}).status_code == 400
    srv.cli("stop", "private-svc", "-y", "-x", "--project", "main")


def test_a_plain_member_runs_but_does_not_manage_the_servers_machine(
    shared: Server, project_dir: Path
):
    """carol is a `user` of main: she may run there (and stop anyone's run: runs are the team's
    work), but the `local` fleet is the server's own machine: only a project admin deletes it.
    A deactivated carol is refused at once, the SSH relay and the proxy included."""
    srv = shared
    r = srv.cli("user", "create", "carol")
    token = re.search(r"shown only now\): (\S+)", r.stdout).group(1)  # type: ignore[union-attr]
    r = srv.cli("project", "add-member", "main", "carol", "--role", "user", "--project", "main")
    assert r.returncode == 0, r.stdout + r.stderr
    r = srv.api("/api/project/main/fleets/delete", {"names": ["local"]}, token=token)
    assert r.status_code == 403 and "requires the admin role" in r.text, r.text
    assert srv.api("/api/project/main/backends/list", {}, token=token).status_code == 403
    write_config(project_dir, "c.dstack.yml", task("carols", "echo carol-ran"))
    env = {"DSTACK_SERVER_URL": srv.url, "DSTACK_TOKEN": token, "DSTACK_PROJECT": "main"}
    r = srv.cli("apply", "-f", "c.dstack.yml", "-y", cwd=project_dir, env=env)
    assert r.returncode == 0 and "carol-ran" in r.stdout, r.stdout + r.stderr
    r = srv.cli("user", "update", "carol", "--deactivate")
    assert r.returncode == 0, r.stdout + r.stderr
    started = time.monotonic()
    r = srv.api("/api/runs/list", {}, token=token)
    assert r.status_code == 403 and r.json()["detail"][0]["msg"] == "Invalid token"
    assert time.monotonic() - started < 5
    r = srv.cli("ssh-proxy", "--url", srv.url, "--project", "main", "carols", env=env)
    assert r.returncode == 1 and r.stderr.strip() == "dstack: Invalid token", r.stderr
