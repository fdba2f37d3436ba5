"""A run from `dstack apply` to a final status, through the real server, agent and CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from .harness import Server, wait_until, write_config


def task(name: str, *commands: str, extra: str = "") -> str:
    cmds = "\n".join(f"  - {json.dumps(c)}" for c in commands)
    return (
        f"type: task\nname: {name}\ncommands:\n{cmds}\n"
        "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n" + extra
    )


def test_attached_apply_streams_output_and_exits_with_the_job(server: Server, project_dir: Path):
    write_config(
        project_dir,
        "t.dstack.yml",
        task(
            "attached-ok",
            "echo first-line",
            "cat data.txt",
            "echo rank=$DSTACK_NODE_RANK",
            "echo name=$DSTACK_RUN_NAME",
        ),
    )
    r = server.cli("apply", "-f", "t.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "first-line" in out
    assert "payload-from-the-working-dir" in out  # the working directory was uploaded
    assert "rank=0" in out and "name=attached-ok" in out
    assert out.index("first-line") < out.index("payload-from-the-working-dir")
    run = server.run("attached-ok")
    assert run["status"] == "done"
    assert run["latest_job_submission"]["status_message"] == "exited (0)"


def test_failing_command_fails_the_run_with_its_exit_code(server: Server, project_dir: Path):
    write_config(project_dir, "f.dstack.yml", task("fails", "echo about-to-fail", "exit 3"))
    r = server.cli("apply", "-f", "f.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "about-to-fail" in r.stdout
    run = server.run("fails")
    assert run["status"] == "failed"
    assert run["termination_reason"] == "job_failed"
    sub = run["jobs"][0]["job_submissions"][-1]
    assert sub["exit_status"] == 3
    assert sub["termination_reason"] == "container_exited_with_error"
    assert sub["status_message"] == "exited (3)"
    ps = json.loads(server.cli("ps", "-a", "--json").stdout)
    assert ps["project"] == "main"
    assert any(x["run_spec"]["run_name"] == "fails" and x["status"] == "failed" for x in ps["runs"])


def test_detached_run_logs_and_graceful_stop(server: Server, project_dir: Path):
    write_config(
        project_dir,
        "d.dstack.yml",
        task(
            "detached",
            "echo started-detached",
            "trap 'echo got-sigterm; exit 0' TERM",
            "while true; do sleep 0.1; done",
        ),
    )
    r = server.cli("apply", "-f", "d.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "detaching" in r.stdout.lower()
    server.wait_status("detached", "running")
    wait_until(lambda: "started-detached" in server.cli("logs", "detached").stdout, what="log line")
    ps = server.cli("ps")
    assert "detached" in ps.stdout and "running" in ps.stdout
    r = server.cli("stop", "detached", "-y")
    assert r.returncode == 0, r.stdout + r.stderr
    run = server.wait_status("detached", "terminated")
    assert run["termination_reason"] == "stopped_by_user"
    sub = run["jobs"][0]["job_submissions"][-1]
    assert sub["status"] == "terminated"
    assert sub["termination_reason"] == "terminated_by_user"
    assert sub["status_message"] == "stopped"
    assert "got-sigterm" in server.cli("logs", "detached").stdout  # the graceful path ran


def test_abort_stops_at_once(server: Server, project_dir: Path):
    write_config(
        project_dir,
        "a.dstack.yml",
        task(
            "aborted",
            "trap 'echo ignoring-term' TERM",
            "while true; do sleep 0.1; done",
            extra="stop_duration: 10m\n",
        ),
    )
    assert server.cli("apply", "-f", "a.dstack.yml", "-y", "-d", cwd=project_dir).returncode == 0
    server.wait_status("aborted", "running")
    r = server.cli("stop", "aborted", "-y", "-x")
    assert r.returncode == 0, r.stdout + r.stderr
    run = server.wait_status("aborted", "terminated", timeout=20)
    assert run["termination_reason"] == "aborted_by_user"
    assert run["jobs"][0]["job_submissions"][-1]["status"] == "aborted"


def test_active_name_is_refused_unless_force(server: Server, project_dir: Path):
    write_config(project_dir, "r.dstack.yml", task("rerun", "sleep 60"))
    assert server.cli("apply", "-f", "r.dstack.yml", "-y", "-d", cwd=project_dir).returncode == 0
    first = server.wait_status("rerun", "running")
    again = server.cli("apply", "-f", "r.dstack.yml", "-y", "-d", cwd=project_dir)
    assert again.returncode == 0  # the CLI says nothing changed and exits cleanly ...
    assert "--force" in again.stdout + again.stderr
    assert server.run("rerun")["id"] == first["id"]  # ... and submits nothing
    forced = server.cli("apply", "-f", "r.dstack.yml", "-y", "-d", "--force", cwd=project_dir)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    # The server stopped the old run and submitted the new one: the CLI made one call.
    wait_until(
        lambda: (r := server.run("rerun"))["id"] != first["id"] and r["status"] == "running",
        timeout=60,
        what="the replacement running",
    )
    old = server.api("/api/project/main/runs/get", {"id": first["id"]}).json()
    assert old["status"] == "terminated" and old["termination_reason"] == "stopped_by_user"
    assert old["jobs"][0]["job_submissions"][-1]["termination_reason"] == "terminated_by_user"
    messages = []
    for target in ("rerun", "rerun-0-0"):  # the runs' and their jobs' events
        body = {"project_name": "main", "target_name": target, "limit": 100}
        messages += [e["message"] for e in server.api("/api/events/list", body).json()]
    server.cli("stop", "rerun", "-y", "-x")
    assert any(m.startswith("Run replacement requested") for m in messages), messages
    assert f"Run submitted, replacing run {first['id']}" in messages
    # The job's transition is the job reconciler's, with the event users saw before.
    assert any(
        m == "Job status changed RUNNING -> TERMINATING. Termination reason: TERMINATED_BY_USER"
        for m in messages
    ), messages


def test_force_replacement_survives_a_server_restart(tmp_path: Path, project_dir: Path):
    """The replacement is a row, not a client's loop: the server dies while the old run
    stops, and the new run still comes up after the restart."""
    srv = Server(home=tmp_path / "home")
    srv.home.mkdir()
    srv.start()
    try:
        slow_stop = "trap 'sleep 4; exit 0' TERM; while true; do sleep 0.2; done"
        write_config(project_dir, "s.dstack.yml", task("replaced", slow_stop))
        cmd = ("apply", "-f", "s.dstack.yml", "-y", "-d")
        assert srv.cli(*cmd, cwd=project_dir).returncode == 0
        first = srv.wait_status("replaced", "running")
        write_config(project_dir, "s.dstack.yml", task("replaced", "sleep 60"))
        forced = srv.cli(*cmd, "--force", cwd=project_dir)
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "Stopping the active run replaced" in forced.stdout
        srv.wait_status("replaced", "terminating", timeout=20)  # stopping, slowly
        srv.kill()
        srv.start()
        second = wait_until(
            lambda: (r := srv.run("replaced"))["id"] != first["id"] and r["status"] == "running"
            and r,
            timeout=60,
            what="the replacement running after the restart",
        )
        assert second["run_spec"]["configuration"]["commands"] == ["sleep 60"]
        old = srv.api("/api/project/main/runs/get", {"id": first["id"]}).json()
        assert old["status"] == "terminated", old["status"]
        srv.cli("stop", "replaced", "-y", "-x")
    finally:
        srv.cleanup()


def test_declining_the_plan_creates_nothing(server: Server, project_dir: Path):
    write_config(project_dir, "n.dstack.yml", task("declined", "echo never"))
    r = server.cli("apply", "-f", "n.dstack.yml", cwd=project_dir, input="n\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "local" in r.stdout  # the offers table was shown
    assert "Exiting" in r.stdout
    resp = server.api("/api/project/main/runs/get", {"run_name": "declined"})
    assert resp.status_code == 400 and "not found" in resp.text


def test_max_duration_stops_the_job(server: Server, project_dir: Path):
    write_config(
        project_dir,
        "m.dstack.yml",
        task("too-long", "echo tick", "sleep 60", extra="max_duration: 2s\n"),
    )
    assert server.cli("apply", "-f", "m.dstack.yml", "-y", "-d", cwd=project_dir).returncode == 0
    run = server.wait_status("too-long", "terminated", "failed", timeout=40)
    sub = run["jobs"][0]["job_submissions"][-1]
    assert sub["termination_reason"] == "max_duration_exceeded"
    assert sub["status"] == "terminated"


def test_retry_on_error_resubmits(server: Server, project_dir: Path, request):
    # Where the job's user (dstack-job for a root server) may write: not root's tmp_path.
    flag = Path("/var/tmp") / f"dstack-e2e-retry-{uuid.uuid4().hex}"
    request.addfinalizer(lambda: flag.unlink(missing_ok=True))
    write_config(
        project_dir,
        "retry.dstack.yml",
        task(
            "retried",
            f"if [ -f {flag} ]; then echo second-try; else touch {flag}; exit 1; fi",
            extra="retry:\n  on_events: [error]\n  duration: 10m\n",
        ),
    )
    assert (
        server.cli("apply", "-f", "retry.dstack.yml", "-y", "-d", cwd=project_dir).returncode == 0
    )
    run = server.wait_status("retried", "done", "failed", timeout=60)
    assert run["status"] == "done"
    subs = run["jobs"][0]["job_submissions"]
    assert [s["submission_num"] for s in subs] == [0, 1]
    assert subs[0]["status"] == "failed" and subs[1]["status"] == "done"


def test_events_record_every_transition(server: Server, project_dir: Path):
    write_config(project_dir, "e.dstack.yml", task("evented", "true"))
    assert server.cli("apply", "-f", "e.dstack.yml", "-y", cwd=project_dir).returncode == 0
    out = server.cli("event").stdout
    for text in (
        "[run evented] Run submitted",
        "SUBMITTED -> PROVISIONING",
        "PROVISIONING -> RUNNING",
        "RUNNING -> DONE",
    ):
        assert text in out, out
    # --within-run: the run's events and its jobs' (job events target the job, not the run);
    # --target-run: only the run's own; another run's events are in neither.
    write_config(project_dir, "o.dstack.yml", task("other-evented", "true"))
    assert server.cli("apply", "-f", "o.dstack.yml", "-y", cwd=project_dir).returncode == 0
    within = server.cli("event", "--within-run", "evented").stdout
    assert "[run evented] Run submitted" in within and "[job evented-0-0]" in within, within
    assert "other-evented" not in within, within
    target = server.cli("event", "--target-run", "evented").stdout
    assert "[run evented]" in target and "[job evented" not in target, target
    r = server.cli("event", "--within-run", "no-such-run")
    assert r.returncode != 0 and "no-such-run" in r.stdout + r.stderr
    # --within-fleet: the fleet's events and its instances' (the local instance ran the task).
    fleet = server.cli("event", "--within-fleet", "local").stdout
    assert "[instance local-0]" in fleet, fleet
    assert "[run " not in fleet and "[job " not in fleet, fleet
