"""The agent's HTTP API against a real agent process running real jobs."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dstack.agent import protocol
from dstack.agent.spec import BadRequest, validate_spec

from .helpers import TOKEN, AgentProcess, wait_for


def make_tar(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_healthcheck_and_files(agent: AgentProcess) -> None:
    response = httpx.get(f"{agent.url}/api/healthcheck")
    assert response.json() == {"service": "dstack-agent", "version": "0.1.0"}
    info = json.loads((agent.home / "agent.json").read_text())
    assert set(info) == {"pid", "port", "version", "started_at"}
    stored = (agent.home / "token.sha256").read_text().strip()
    assert stored == hashlib.sha256(TOKEN.encode()).hexdigest()
    for path in agent.home.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_auth_required(agent: AgentProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = httpx.get(f"{agent.url}/api/jobs", headers=headers)
        assert response.status_code == 401
        assert "error" in response.json()
    headers, body = protocol.encode_start({"id": "x", "commands": ["true"]}, b"")
    response = httpx.post(f"{agent.url}/api/jobs/x/start", content=body, headers=headers)
    assert response.status_code == 401
    assert not (agent.home / "jobs" / "x").exists()


def test_bad_requests_name_the_field(agent: AgentProcess) -> None:
    cases = [
        ({"id": "a", "commands": "echo"}, "commands"),
        ({"id": "a b", "commands": ["true"]}, "id"),
        ({"id": "a", "commands": ["true"], "env": {"A": 1}}, "env"),
        ({"id": "a", "commands": ["true"], "gpus": "all"}, "gpus"),
        ({"id": "a", "commands": ["true"], "runtime": "vm"}, "runtime"),
        ({"id": "a", "runtime": "docker"}, "image"),
        ({"id": "a", "commands": ["true"], "stop_duration": -1}, "stop_duration"),
    ]
    for body, field in cases:
        response = agent.start_job(body)
        assert response.status_code == 400, body
        assert response.json()["error"].startswith(field), response.json()
    assert agent.get("/api/jobs").json()["jobs"] == []


def test_bad_start_frames_are_refused(agent: AgentProcess) -> None:
    """The start body is the spec (its length in a header) then the code: a frame that does
    not add up is a 400 naming the header, and nothing is created."""
    path = protocol.START_JOB.path("f")
    spec = b'{"id": "f", "commands": ["true"]}'
    cases = [
        ({}, spec, protocol.SPEC_LENGTH),  # no header
        ({protocol.SPEC_LENGTH: "x"}, spec, protocol.SPEC_LENGTH),
        ({protocol.SPEC_LENGTH: "0"}, spec, protocol.SPEC_LENGTH),
        ({protocol.SPEC_LENGTH: str(len(spec) + 1)}, spec, protocol.SPEC_LENGTH),
        ({protocol.SPEC_LENGTH: "9"}, b"{not json" + b"code", "spec"),
        ({protocol.SPEC_LENGTH: "11"}, b'{"id": "g"}', "id"),  # not the job of the path
        ({protocol.SPEC_LENGTH: str(len(spec))}, spec + b"not a tar", "code"),
    ]
    for headers, body, field in cases:
        response = agent.client.post(path, content=body, headers=headers)  # type: ignore[union-attr]
        assert response.status_code == 400, (headers, body)
        assert response.json()["error"].startswith(field), response.json()
    assert agent.get("/api/jobs").json()["jobs"] == []
    assert [p.name for p in (agent.home / "jobs").iterdir()] == []


def test_unknown_job_and_endpoint(agent: AgentProcess) -> None:
    for path in ("/api/jobs/nope", "/api/jobs/nope/logs", "/api/nothing"):
        response = agent.get(path)
        assert response.status_code == 404, path
        assert "error" in response.json()
    assert agent.post("/api/jobs/nope/stop", {}).status_code == 404
    assert agent.post("/api/jobs/nope/remove").status_code == 404
    # The three calls a start used to take are gone: one start carries spec and code.
    assert agent.post("/api/jobs", {"id": "x", "commands": ["true"]}).status_code == 405
    assert agent.post("/api/jobs/nope/run").status_code == 404
    assert agent.client.put("/api/jobs/nope/code", content=b"").status_code == 404  # type: ignore[union-attr]


def test_job_success_env_and_clean_base_env(agent: AgentProcess) -> None:
    script = (
        'echo "FOO=$FOO"; echo "TOKEN=${DSTACK_AGENT_TOKEN:-unset}"; echo "PP=${PYTHONPATH:-unset}"'
    )
    state = agent.shell("ok", script, env={"FOO": "bar baz"})
    assert state["status"] in ("running", "done")
    assert state["started_at"] is not None
    final = agent.wait_finished("ok")
    assert final["status"] == "done"
    assert final["termination_reason"] == "done_by_runner"
    assert final["exit_status"] == 0
    assert final["finished_at"] is not None
    out = agent.output("ok")
    assert "FOO=bar baz" in out
    assert "TOKEN=unset" in out and "PP=unset" in out
    assert final["log_bytes"] > 0


def test_job_failure_reports_exit_status_and_tail(agent: AgentProcess) -> None:
    agent.shell("bad", "echo line1; echo oops >&2; exit 3")
    final = agent.wait_finished("bad")
    assert final["status"] == "failed"
    assert final["exit_status"] == 3
    assert final["termination_reason"] == "container_exited_with_error"
    assert "oops" in final["termination_message"]
    assert agent.output("bad", "stderr") == "oops\n"
    assert agent.output("bad", "stdout") == "line1\n"


def test_code_and_working_dir(agent: AgentProcess) -> None:
    data = make_tar({"sub/hello.txt": "hello from code\n", "sub/run.sh": "#!/bin/sh\necho ran\n"})
    commands = ["/bin/sh", "-c", "pwd; cat hello.txt; ./run.sh"]
    agent.submit("code", commands, code=data, working_dir="sub")
    assert agent.wait_finished("code")["status"] == "done"
    out = agent.output("code")
    assert out.splitlines() == [str(agent.home / "jobs/code/code/sub"), "hello from code", "ran"]


def test_unsafe_code_is_rejected(agent: AgentProcess) -> None:
    data = make_tar({"../escape.txt": "x"})
    response = agent.start_job({"id": "evil", "commands": ["true"]}, data)
    assert response.status_code == 400
    assert response.json()["error"].startswith("code")
    assert not (agent.home / "jobs" / "escape.txt").exists()
    assert agent.get("/api/jobs/evil").status_code == 404  # nothing half made
    assert [p.name for p in (agent.home / "jobs").iterdir()] == []


def test_logs_are_paged_by_cursor(agent: AgentProcess) -> None:
    agent.shell("many", 'i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); done')
    agent.wait_finished("many")
    offset, text, pages = 0, b"", 0
    while True:
        page = agent.ok("GET", "/api/jobs/many/logs", params={"offset": offset, "limit": 1000})
        pages += 1
        text += b"".join(base64.b64decode(e["message"]) for e in page["entries"])
        if page["finished"]:
            break
        assert page["next_offset"] > offset
        offset = page["next_offset"]
    assert text.decode().splitlines() == [f"line {i}" for i in range(300)]
    assert pages >= 1
    response = agent.get("/api/jobs/many/logs", params={"offset": 1})
    assert response.status_code == 400 and response.json()["error"].startswith("offset")
    response = agent.get("/api/jobs/many/logs", params={"limit": 0})
    assert response.status_code == 400 and response.json()["error"].startswith("limit")


def test_logs_stream_while_running(agent: AgentProcess) -> None:
    flag = agent.home / "go-stream"
    agent.shell("live", f"echo first; while [ ! -f {flag} ]; do sleep 0.02; done; echo second")
    wait_for(lambda: agent.output("live") == "first\n")
    page = agent.ok("GET", "/api/jobs/live/logs")
    assert page["finished"] is False
    flag.touch()
    agent.wait_finished("live")
    page2 = agent.ok("GET", "/api/jobs/live/logs", params={"offset": page["next_offset"]})
    assert [base64.b64decode(e["message"]) for e in page2["entries"]] == [b"second\n"]
    assert page2["finished"] is True


def test_graceful_stop_delivers_sigterm(agent: AgentProcess) -> None:
    script = "trap 'echo got-term; exit 0' TERM; echo started; while true; do sleep 0.05; done"
    agent.shell("grace", script)
    agent.wait_output("grace", "started")
    state = agent.ok("POST", "/api/jobs/grace/stop", {"abort": False, "reason": None})
    assert state["stop_requested"] is True
    final = agent.wait_finished("grace")
    assert final["status"] == "terminated"
    assert final["termination_reason"] == "terminated_by_server"
    assert "got-term" in agent.output("grace")


def test_graceful_stop_kills_after_stop_duration(agent: AgentProcess) -> None:
    agent.shell(
        "stubborn", "trap '' TERM; echo started; while true; do sleep 0.05; done", stop_duration=1
    )
    agent.wait_output("stubborn", "started")
    agent.ok("POST", "/api/jobs/stubborn/stop", {"reason": "aborted_by_user"})
    final = agent.wait_finished("stubborn", timeout=6)
    assert final["status"] == "terminated"
    assert final["termination_reason"] == "aborted_by_user"
    assert final["exit_status"] == 137


def test_abort_kills_at_once(agent: AgentProcess) -> None:
    agent.shell("abort", "trap '' TERM; echo started; while true; do sleep 0.05; done")
    agent.wait_output("abort", "started")
    agent.ok("POST", "/api/jobs/abort/stop", {"abort": True, "reason": "aborted_by_user"})
    final = agent.wait_finished("abort", timeout=3)
    assert final["status"] == "terminated"
    assert final["termination_reason"] == "aborted_by_user"


def test_stop_finished_and_submitted_jobs(agent: AgentProcess) -> None:
    agent.shell("quick", "true")
    agent.wait_finished("quick")
    state = agent.ok("POST", "/api/jobs/quick/stop", {"abort": True})
    assert state["status"] == "done"
    # An agent killed between creating a job and running it leaves a submitted job; a stop
    # then ends it without running, and a repeated start does not run it either.
    spec = {"id": "never", "name": "never", "commands": ["/bin/sh", "-c", "echo ran"]}
    _leave_submitted(agent, spec)
    assert agent.job("never")["status"] == "submitted"
    state = agent.ok("POST", "/api/jobs/never/stop", {})
    assert state["status"] == "terminated"
    assert state["termination_reason"] == "terminated_by_server"
    assert agent.start_job(spec).json()["status"] == "terminated"
    assert agent.output("never") == ""


def _leave_submitted(agent: AgentProcess, spec: dict[str, object], code: bytes = b"") -> None:
    """What a start leaves when the agent dies after creating the job, before running it."""
    job = agent.home / "jobs" / str(spec["id"])
    (job / "code").mkdir(parents=True)
    stored = {
        **validate_spec(spec),
        "code_sha256": hashlib.sha256(code).hexdigest(),
        "submitted_at": "2026-01-01T00:00:00Z",
    }
    (job / "spec.json").write_text(json.dumps(stored))


def test_a_start_repeated_after_an_agent_crash_runs_the_job(agent: AgentProcess) -> None:
    spec = {"id": "crashed", "name": "crashed", "commands": ["/bin/sh", "-c", "echo ran"]}
    _leave_submitted(agent, spec)
    state = agent.start_job(spec).json()
    assert state["status"] in ("running", "done")
    assert agent.wait_finished("crashed")["status"] == "done"
    assert agent.output("crashed") == "ran\n"


def test_max_duration(agent: AgentProcess) -> None:
    agent.shell("long", "echo started; sleep 30", max_duration=1)
    final = agent.wait_finished("long", timeout=6)
    assert final["status"] == "terminated"
    assert final["termination_reason"] == "max_duration_exceeded"


def test_start_is_idempotent_by_job_id(agent: AgentProcess) -> None:
    """A repeated start (the server crashed after sending it) answers the job as it is and
    never runs it twice; a different spec or code under the same id is refused."""
    code = make_tar({"f.txt": "x"})
    commands = ["/bin/sh", "-c", "echo once"]
    first = agent.submit("idem", commands, code=code)
    again = agent.submit("idem", commands, code=code)
    assert again["submitted_at"] == first["submitted_at"]
    agent.wait_finished("idem")
    assert agent.submit("idem", commands, code=code)["status"] == "done"
    assert agent.output("idem") == "once\n"
    changed = agent.start_job({"id": "idem", "name": "idem", "commands": ["echo", "twice"]}, code)
    assert changed.status_code == 409
    assert changed.json()["error"].startswith("id") and "commands" in changed.json()["error"]
    other_code = agent.start_job({"id": "idem", "name": "idem", "commands": commands}, b"")
    assert other_code.status_code == 409 and "code" in other_code.json()["error"]
    secret = agent.start_job({"id": "idem", "commands": commands, "env": {"K": "hunter2"}}, code)
    assert secret.status_code == 409 and "hunter2" not in secret.text
    assert agent.output("idem") == "once\n"
    assert [j["id"] for j in agent.ok("GET", "/api/jobs")["jobs"]] == ["idem"]


def test_list_and_remove(agent: AgentProcess) -> None:
    flag = agent.home / "go-remove"
    agent.shell("r1", "true")
    agent.shell("r2", f"while [ ! -f {flag} ]; do sleep 0.02; done")
    agent.wait_finished("r1")
    jobs = {j["id"]: j["status"] for j in agent.ok("GET", "/api/jobs")["jobs"]}
    assert jobs == {"r1": "done", "r2": "running"}
    response = agent.post("/api/jobs/r2/remove")
    assert response.status_code == 409
    flag.touch()
    agent.wait_finished("r2")
    assert agent.ok("POST", "/api/jobs/r2/remove")["removed"] is True
    assert not (agent.home / "jobs" / "r2").exists()
    assert agent.get("/api/jobs/r2").status_code == 404
    assert [j["id"] for j in agent.ok("GET", "/api/jobs")["jobs"]] == ["r1"]


def test_missing_working_dir_is_executor_error(agent: AgentProcess) -> None:
    agent.submit("nowd", ["true"], working_dir="does/not/exist")
    final = agent.wait_finished("nowd")
    assert final["status"] == "failed"
    assert final["termination_reason"] == "executor_error"
    assert "does/not/exist" in final["termination_message"]


def test_host_info(agent: AgentProcess) -> None:
    info = agent.ok("GET", "/api/host_info")
    assert info["cpus"] >= 1 and info["memory_mib"] > 0
    assert info["cpu_arch"] in ("x86", "arm")
    assert info["disk_size_mib"] >= info["disk_free_mib"] > 0
    assert isinstance(info["gpus"], list) and isinstance(info["docker"], bool)
    assert all(not a.startswith("127.") for a in info["addresses"])


def test_stop_right_after_run(agent: AgentProcess) -> None:
    """The supervisor may not have its signal handlers yet: the stop file still wins."""
    for abort in (False, True):
        job_id = f"instant-{abort}"
        agent.shell(job_id, "sleep 30")
        agent.ok("POST", f"/api/jobs/{job_id}/stop", {"abort": abort})
        final = agent.wait_finished(job_id)
        assert final["status"] == "terminated"


def test_command_not_found_is_executor_error(agent: AgentProcess) -> None:
    agent.submit("nocmd", ["/nonexistent/binary"])
    final = agent.wait_finished("nocmd")
    assert (final["status"], final["termination_reason"]) == ("failed", "executor_error")
    assert "/nonexistent/binary" in final["termination_message"]


def test_protocol_errors_are_json(agent: AgentProcess) -> None:
    response = agent.client.delete("/api/jobs")  # type: ignore[union-attr]
    assert response.status_code == 405 and "error" in response.json()
    response = agent.client.request("OPTIONS", "/api/jobs")  # type: ignore[union-attr]
    assert response.status_code == 501 and "error" in response.json()


def test_concurrent_starts_make_one_job(agent: AgentProcess) -> None:
    spec = {"id": "race", "name": "race", "commands": ["/bin/sh", "-c", "cat f.txt"]}
    headers, body = protocol.encode_start(spec, make_tar({"f.txt": "once\n"}))

    def start(_: int) -> str:
        with httpx.Client(base_url=agent.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            response = c.post("/api/jobs/race/start", content=body, headers=headers)
            assert response.status_code == 200, response.text
            # The same connection still works: the whole body was read.
            assert c.get("/api/jobs/race").status_code == 200
            return response.json()["submitted_at"]

    with ThreadPoolExecutor(8) as pool:
        stamps = set(pool.map(start, range(8)))
    assert len(stamps) == 1
    agent.wait_finished("race")
    assert agent.output("race") == "once\n"
    assert [p.name for p in (agent.home / "jobs").iterdir()] == ["race"]


def test_mpi_hostfile_is_written_and_named(agent: AgentProcess) -> None:
    """The server's node list becomes a file; DSTACK_MPI_HOSTFILE names it (process runtime)."""
    hostfile = "10.0.0.1 slots=8\n10.0.0.2 slots=8\n"
    agent.shell(
        "mpi", 'echo "F=$DSTACK_MPI_HOSTFILE"; cat "$DSTACK_MPI_HOSTFILE"', mpi_hostfile=hostfile
    )
    assert agent.wait_finished("mpi")["status"] == "done"
    out = agent.output("mpi")
    assert "/mpi/hostfile" in out and "10.0.0.1 slots=8\n10.0.0.2 slots=8" in out, out
    agent.shell("nompi", 'echo "F=${DSTACK_MPI_HOSTFILE:-unset}"')
    agent.wait_finished("nompi")
    assert "F=unset" in agent.output("nompi")
    with pytest.raises(BadRequest, match="mpi_hostfile"):
        validate_spec({"id": "a", "commands": ["true"], "mpi_hostfile": 1})
