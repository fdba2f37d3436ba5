"""Bad input gets a clear message and a non-zero exit: never a traceback, never a 500."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from .harness import Server, free_port, write_config
from .test_runs import task


def _clean(r) -> str:  # noqa: ANN001
    text = r.stdout + r.stderr
    assert "Traceback" not in text, text
    return text


def test_missing_file(server: Server, project_dir: Path):
    r = server.cli("apply", "-f", "nope.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 1
    assert "nope.dstack.yml does not exist" in _clean(r)


def test_malformed_file_names_file_line_and_field(server: Server, project_dir: Path):
    write_config(
        project_dir,
        "bad.dstack.yml",
        "type: task\nname: bad\ncommands: [echo]\nresources:\n  gpu: A100:40XB\n",
    )
    r = server.cli("apply", "-f", "bad.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 1
    text = _clean(r)
    assert "bad.dstack.yml:5" in text and "resources.gpu" in text and "XB" in text, text


def test_invalid_yaml(server: Server, project_dir: Path):
    write_config(project_dir, "broken.dstack.yml", "type: task\ncommands: [echo\n")
    r = server.cli("apply", "-f", "broken.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 1
    assert "broken.dstack.yml" in _clean(r)


def test_unknown_run_name(server: Server):
    for args in (
        ("logs", "no-such-run"),
        ("stop", "no-such-run", "-y"),
        ("run", "get", "no-such-run", "--json"),
    ):
        r = server.cli(*args)
        assert r.returncode == 1, args
        assert "no-such-run" in _clean(r) and "not found" in (r.stdout + r.stderr), args


def test_name_outside_the_allowed_characters(server: Server, project_dir: Path):
    write_config(project_dir, "n.dstack.yml", task("Bad_Name", "echo hi"))
    r = server.cli("apply", "-f", "n.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 1
    text = _clean(r)
    assert "Bad_Name" in text
    # And the server refuses it too, for API callers that skip the CLI.
    spec = {"run_name": "Bad_Name", "configuration": {"type": "task", "commands": ["echo"]}}
    resp = server.api("/api/project/main/runs/get_plan", {"run_spec": spec})
    assert resp.status_code == 400
    assert resp.json()["detail"][0]["field"] == "run_spec.run_name"


def test_server_down_names_the_url(server: Server, tmp_path: Path):
    port = free_port()
    home = tmp_path / "h"
    (home / ".dstack").mkdir(parents=True)
    (home / ".dstack" / "config.yml").write_text(
        f"projects:\n- default: true\n  name: main\n  token: x\n  url: http://127.0.0.1:{port}\n"
    )
    r = server.cli("ps", env={"HOME": str(home), "DSTACK_CLI_RETRY_DELAY": "0.05"}, timeout=60)
    assert r.returncode == 1
    assert f"http://127.0.0.1:{port}" in _clean(r)


def test_wrong_token(server: Server):
    r = server.cli("ps", env={"DSTACK_TOKEN": "wrong-token"})
    assert r.returncode == 1
    assert "denied" in _clean(r).lower()
    resp = server.api("/api/runs/list", {}, token="wrong-token")
    assert resp.status_code == 403
    resp = httpx.post(f"{server.url}/api/runs/list", json={})
    assert resp.status_code == 403 and "bearer" in resp.text.lower()


def test_malformed_api_request_names_the_field(server: Server):
    resp = server.api("/api/project/main/runs/stop", {"runs_names": "x", "abort": "maybe"})
    assert resp.status_code == 422
    locs = {tuple(d["loc"]) for d in resp.json()["detail"]}
    assert ("body", "runs_names") in locs and ("body", "abort") in locs
    resp = server.api(
        "/api/project/main/runs/get_plan",
        {
            "run_spec": {
                "configuration": {
                    "type": "task",
                    "commands": ["x"],
                    "resources": {"gpu": "A100:40XB"},
                }
            }
        },
    )
    assert resp.status_code == 400
    detail = resp.json()["detail"][0]
    assert "resources.gpu" in detail["field"] and "XB" in detail["msg"]
    resp = server.api("/api/project/main/runs/get", {"runn_name": "x"})
    assert resp.status_code == 422 and "runn_name" in resp.text
    resp = server.api("/api/project/nope/runs/get", {"run_name": "x"})
    assert resp.status_code == 400 and "Project nope not found" in resp.text


def test_upload_over_the_size_limit(server: Server, project_dir: Path):
    (project_dir / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    write_config(project_dir, "u.dstack.yml", task("too-big", "echo hi"))
    r = server.cli("apply", "-f", "u.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 1
    text = _clean(r)
    assert "limit" in text and ".dstackignore" in text, text
    # The server enforces its own limit whatever the client checks.
    resp = httpx.post(
        f"{server.url}/api/project/main/repos/upload_code",
        files={"file": ("code.tar.gz", os.urandom(3 * 1024 * 1024))},
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=30,
    )
    assert resp.status_code == 413
    assert "limit" in resp.json()["detail"][0]["msg"]
    # And .dstackignore makes the same directory fit.
    (project_dir / ".dstackignore").write_text("big.bin\n")
    r = server.cli("apply", "-f", "u.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0, _clean(r)


def test_run_that_fits_nothing_fails_at_once_naming_the_requirement(
    server: Server, project_dir: Path
):
    write_config(
        project_dir,
        "g.dstack.yml",
        "type: task\nname: wants-h100\ncommands: [nvidia-smi]\nresources:\n  gpu: H100:8\n",
    )
    r = server.cli("apply", "-f", "g.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 1
    run = server.wait_status("wants-h100", "failed")
    sub = run["jobs"][0]["job_submissions"][-1]
    assert sub["termination_reason"] == "failed_to_start_due_to_no_capacity"
    assert "gpu" in sub["termination_reason_message"]
    assert sub["status_message"] == "no capacity"
