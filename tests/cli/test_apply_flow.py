"""`dstack apply` for runs, end to end against the stub server (cli.md §2 flow)."""

from __future__ import annotations

import io
import tarfile

import pytest

from .stub_server import StubState, serve
from .test_main import dstack


@pytest.fixture
def stub():
    state = StubState()
    httpd, url = serve(state)
    state.url = url
    yield state
    httpd.shutdown()


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "t.dstack.yml").write_text(
        "type: task\nname: demo\ncommands:\n  - echo ${{ run.args }}\n"
    )
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "big.bin").write_bytes(b"x" * 1000)
    (tmp_path / ".dstackignore").write_text("*.bin\n")
    return tmp_path


def run_apply(stub, workdir, *args, stdin=""):
    env = {"DSTACK_SERVER_URL": stub.url, "DSTACK_TOKEN": "t", "DSTACK_PROJECT": "main"}
    return dstack("apply", "-f", "t.dstack.yml", *args, home=workdir, cwd=workdir, env=env,
                  stdin=stdin)


def test_answering_no_shows_plan_and_creates_nothing(stub, workdir):
    result = run_apply(stub, workdir, stdin="n\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert " Project " in out and "task (nodes=1)" in out and "on-demand" in out
    assert "#  BACKEND" in out and "local (local)" in out
    assert " Shown 3 of 7 offers, $3max" in out
    assert "Submit the run demo? [y/n]: " in out and out.rstrip().endswith("Exiting...")
    assert not any(c.endswith("/runs/apply") for c in stub.calls)


def test_detach_submits_with_code_and_args(stub, workdir):
    result = run_apply(stub, workdir, "-y", "-d", "--", "--lr", "0.1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("Run demo submitted, detaching...")
    spec = stub.runs["demo"]["run_spec"]
    assert spec["configuration"]["commands"] == ["echo --lr 0.1"]
    assert spec["repo_code_hash"]
    with tarfile.open(fileobj=io.BytesIO(stub.uploads[-1]), mode="r:gz") as tar:
        names = tar.getnames()
    assert "train.py" in names and "big.bin" not in names


def test_attached_streams_logs_and_exits_with_status(stub, workdir):
    result = run_apply(stub, workdir, "-y")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Launching demo..." in out and "demo provisioning completed (running)" in out
    assert out.count("line one\n") == 1 and "line two\n" in out
    assert out.rstrip().endswith("Exited (0)")


def test_attached_failure_exits_1(stub, workdir):
    stub.final_status = "failed"
    result = run_apply(stub, workdir, "-y")
    assert result.returncode == 1
    assert "Run demo exited (3)" in result.stdout


def test_identical_active_run_needs_force(stub, workdir):
    assert run_apply(stub, workdir, "-y", "-d").returncode == 0
    stub.runs["demo"]["status"] = "running"
    result = run_apply(stub, workdir, "-y", "-d")
    assert result.returncode == 0
    assert "Active run demo already exists. Detected no changes." in result.stdout
    assert "Use --force to apply anyway." in result.stdout
    calls_before = len(stub.calls)
    result = run_apply(stub, workdir, "-y", "-d", "--force")
    assert result.returncode == 0, result.stderr
    # One call replaces the run: the server stops the old one and submits the new one.
    calls = stub.calls[calls_before:]
    assert [c for c in calls if c.endswith(("/runs/apply", "/runs/stop"))] == [
        "/api/project/main/runs/apply"
    ]
    assert stub.applied == [("replace", "id-demo")]
    assert "Stopping the active run demo; the new run starts once it has stopped." in (
        result.stdout
    )
    assert result.stdout.rstrip().endswith("Run demo submitted, detaching...")


def test_attached_override_waits_for_the_replacement_then_attaches(stub, workdir):
    assert run_apply(stub, workdir, "-y", "-d").returncode == 0
    stub.runs["demo"]["status"] = "running"
    result = run_apply(stub, workdir, "-y", "-e", "X=1")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Detected changes that cannot be updated in-place:" in out
    assert not any(c.endswith("/runs/stop") for c in stub.calls)
    assert stub.applied == [("replace", "id-demo")]
    assert out.index("Stopping demo...") < out.index("Launching demo...")
    assert stub.runs["demo"]["id"] == "id-demo-next"
    assert stub.runs["demo"]["run_spec"]["configuration"]["env"] == {"X": "1"}
    assert out.rstrip().endswith("Exited (0)")


def test_override_whose_replacement_was_cancelled_fails(stub, workdir):
    assert run_apply(stub, workdir, "-y", "-d").returncode == 0
    stub.runs["demo"]["status"] = "running"
    stub.cancel_replacements = True
    result = run_apply(stub, workdir, "-y", "--force")
    assert result.returncode == 1
    assert "Run demo stopped (stopped) but its replacement was cancelled" in (
        result.stdout + result.stderr
    )


def test_changed_active_run_prompts_override(stub, workdir):
    assert run_apply(stub, workdir, "-y", "-d").returncode == 0
    stub.runs["demo"]["status"] = "running"
    result = run_apply(stub, workdir, "-e", "X=1", stdin="n\n")
    assert result.returncode == 0
    assert "Detected changes that cannot be updated in-place:" in result.stdout
    assert "  - env" in result.stdout
    assert "Stop and override the run? [y/n]: " in result.stdout


def test_ctrl_c_while_attached_detaches(stub, workdir):
    import os
    import signal
    import subprocess
    import sys
    import time

    stub.gets_until_running = 10_000  # stays submitted
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    env.update({"HOME": str(workdir), "DSTACK_SERVER_URL": stub.url, "DSTACK_TOKEN": "t",
                "DSTACK_PROJECT": "main"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstack.cli.main", "apply", "-f", "t.dstack.yml", "-y"],
        cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while "demo" not in stub.runs and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.rstrip().endswith("Detached")
    assert stub.runs["demo"]["status"] == "submitted"  # the run keeps going


def test_changed_active_service_offers_an_in_place_update(stub, workdir):
    (workdir / "t.dstack.yml").write_text(
        "type: service\nname: demo\nport: 8000\ncommands:\n  - python app.py\n"
    )
    assert run_apply(stub, workdir, "-y", "-d").returncode == 0
    stub.runs["demo"]["status"] = "running"
    result = run_apply(stub, workdir, "-e", "X=1", stdin="n\n")
    assert result.returncode == 0
    assert "Detected changes that can be updated in-place:" in result.stdout
    assert "  - env" in result.stdout
    assert "Update the run? [y/n]: " in result.stdout
    assert "Stop and override" not in result.stdout
    result = run_apply(stub, workdir, "-e", "X=1", "-y", "-d")
    assert result.returncode == 0, result.stderr
    assert not any(c.endswith("/runs/stop") for c in stub.calls)
    assert result.stdout.rstrip().endswith("Run demo updated, detaching...")
