"""The local backend runs jobs on the server's own machine as the server's OS user, next to its
data and the admin token: it serves one project (`main`) and no other project can reach it, by
any fleet. Two projects using one server never restart the local agent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .harness import Server, write_config
from .test_runs import task

MEMBER_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from dstack.server.db.session import Database
    from dstack.server.services.users import create_project, create_user
    from dstack.server.settings import load_settings

    async def main():
        db = Database(load_settings().database_url)
        async with db.session() as s:
            user, token = await create_user(s, sys.argv[1])
            await s.flush()
            await create_project(s, user, sys.argv[2])
            await s.commit()
        await db.close()
        print(token)

    asyncio.run(main())
    """
)


def add_member(srv: Server, user: str, project: str) -> str:
    """A user who is a member (the owner) of a project of their own, and nothing else. The
    server has no route for this yet (teams are their own issue): written to its database."""
    r = subprocess.run(
        [sys.executable, "-c", MEMBER_SCRIPT, user, project],
        env=srv.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[-1]
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
    # `local` is no backend of the configuration language: refused with the file and line.
    fleet = "type: fleet\nname: mine\nnodes: 0..1\nbackends: [{}]\n"
    write_config(project_dir, "f.dstack.yml", fleet.format("local"))
    r = srv.cli("apply", "-f", "f.dstack.yml", "-y", "--project", "team", cwd=project_dir)
    assert r.returncode != 0 and "f.dstack.yml:4: backends[0]" in r.stderr, r.stdout + r.stderr
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
