"""Scheduling fields through the real server, agent and CLI on the local backend: a real
every-minute `schedule` (waits, shows its next start, runs at the minute, waits again),
`instances` pinning, `priority` updated in place by re-apply."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from .harness import Server, wait_until, write_config
from .test_runs import task


def _events(server: Server, name: str) -> str:
    return server.cli("event", "--target-run", name).stdout


def test_every_minute_schedule_waits_then_runs_then_waits_again(
    server: Server, project_dir: Path
) -> None:
    write_config(
        project_dir,
        "s.dstack.yml",
        task("every-minute", "echo scheduled-hello", extra="schedule:\n  cron: '* * * * *'\n"),
    )
    r = server.cli("apply", "-f", "s.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every-minute is waiting for schedule..." in r.stdout and "Next run: " in r.stdout
    run = server.run("every-minute")
    assert run["status"] == "pending" and run["jobs"] == []
    first = datetime.fromisoformat(run["next_triggered_at"])
    assert first.second == 0 and first > datetime.now(timezone.utc)
    ps = server.cli("ps", "-v").stdout
    assert "next start" in ps and first.strftime("%H:%M UTC") in ps
    # At the minute the jobs are submitted; the task runs, ends, and the run waits again.
    wait_until(lambda: server.run("every-minute")["jobs"], timeout=90, what="schedule fired")
    wait_until(
        lambda: "scheduled-hello" in server.cli("logs", "every-minute").stdout,
        timeout=60, what="scheduled output",
    )  # fmt: skip

    def rearmed() -> dict | None:
        r = server.run("every-minute")
        nxt = r.get("next_triggered_at")
        return (
            r if r["status"] == "pending" and nxt and datetime.fromisoformat(nxt) > first else None
        )

    again = wait_until(rearmed, timeout=60, what="re-armed")
    assert again["jobs"][0]["job_submissions"][-1]["status"] == "done"
    assert server.cli("stop", "every-minute", "-y").returncode == 0
    assert server.wait_status("every-minute", "terminated")["termination_reason"] == (
        "stopped_by_user"
    )


def test_unknown_instance_is_refused_at_plan(server: Server, project_dir: Path) -> None:
    write_config(
        project_dir, "p.dstack.yml", task("pinned-bad", "echo x", extra="instances: [nope]\n")
    )
    r = server.cli("apply", "-f", "p.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 1
    assert "no instance matches nope" in r.stdout + r.stderr


def test_pinned_to_the_local_instance_runs_there(server: Server, project_dir: Path) -> None:
    fleets = server.api("/api/project/main/fleets/list", {}).json()
    names = [i["name"] for f in fleets for i in f.get("instances") or []]
    if not names:  # the local instance appears with the first run
        write_config(project_dir, "w.dstack.yml", task("warm-up", "echo warm"))
        assert server.cli("apply", "-f", "w.dstack.yml", "-y", cwd=project_dir).returncode == 0
        fleets = server.api("/api/project/main/fleets/list", {}).json()
        names = [i["name"] for f in fleets for i in f.get("instances") or []]
    pin = names[0]
    write_config(
        project_dir, "p.dstack.yml", task("pinned", "echo pinned-ok", extra=f"instances: [{pin}]\n")
    )
    r = server.cli("apply", "-f", "p.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    run = server.run("pinned")
    assert run["status"] == "done"
    assert run["jobs"][0]["job_submissions"][-1]["job_provisioning_data"]["instance_id"]


def test_priority_is_updated_in_place(server: Server, project_dir: Path) -> None:
    # The file lives outside the uploaded directory: editing it must not change the code.
    conf_dir = project_dir.parent / "prio-conf"
    conf_dir.mkdir(exist_ok=True)
    body = "trap 'exit 0' TERM; while true; do sleep 0.2; done"
    write_config(conf_dir, "q.dstack.yml", task("prio", body, extra="priority: 10\n"))
    conf = str(conf_dir / "q.dstack.yml")
    assert server.cli("apply", "-f", conf, "-y", "-d", cwd=project_dir).returncode == 0
    before = server.run("prio")["id"]
    write_config(conf_dir, "q.dstack.yml", task("prio", body, extra="priority: 70\n"))
    r = server.cli("apply", "-f", conf, "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "can be updated in-place" in r.stdout
    after = server.run("prio")
    assert after["id"] == before and after["run_spec"]["configuration"]["priority"] == 70
    assert "priority changed from 10 to 70" in _events(server, "prio")
    server.cli("stop", "prio", "-y", "-x")
