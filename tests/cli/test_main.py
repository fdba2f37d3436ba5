"""The `dstack` process: version, help, startup imports, error lines and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dstack.version import __version__

HEAVY = ("pydantic", "httpx", "rich", "yaml", "dstack.server")


def dstack(*args: str, home: Path, stdin: str = "", cwd: Path | None = None,
           env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    full_env.update({"HOME": str(home), "DSTACK_CLIENT_RETRY_DELAY": "0.01", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "dstack.cli.main", *args], input=stdin, capture_output=True,
        text=True, env=full_env, cwd=cwd, timeout=60,
    )


@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_version(flag, tmp_path):
    result = dstack(flag, home=tmp_path)
    assert result.returncode == 0 and result.stdout == f"{__version__}\n"


@pytest.mark.parametrize("args", [["--version"], ["--help"], []])
def test_startup_imports_nothing_heavy(args, tmp_path):
    code = (
        "import sys, io, contextlib\n"
        "from dstack.cli.main import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        f"        main({args!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


def test_help_lists_commands(tmp_path):
    text = dstack("--help", home=tmp_path).stdout
    for command in ("apply", "ps", "logs", "stop", "offer", "fleet", "attach", "event"):
        assert command in text
    assert "examples:" in dstack("apply", "--help", home=tmp_path).stdout
    assert "examples:" in dstack("logs", "--help", home=tmp_path).stdout


def test_no_command_prints_help(tmp_path):
    result = dstack(home=tmp_path)
    assert result.returncode == 0 and "usage: dstack" in result.stdout


def test_unrecognized_arguments(tmp_path):
    result = dstack("ps", "--bogus", home=tmp_path)
    assert result.returncode != 0 and "Unrecognized arguments: --bogus" in result.stderr


def test_errors_are_one_line_without_traceback(tmp_path):
    result = dstack("ps", home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "No default project, specify project name"


def test_connection_error(tmp_path):
    env = {"DSTACK_SERVER_URL": "http://127.0.0.1:9", "DSTACK_TOKEN": "t",
           "DSTACK_PROJECT": "main"}
    result = dstack("ps", home=tmp_path, env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == "Failed to connect to dstack server http://127.0.0.1:9"
    assert "Traceback" not in result.stderr


def test_apply_file_errors(tmp_path):
    result = dstack("apply", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 1
    assert "No configuration file specified via `-f`" in result.stderr
    result = dstack("apply", "-f", "missing.yml", home=tmp_path, cwd=tmp_path)
    assert result.stderr.strip() == "Configuration file missing.yml does not exist"
    result = dstack("apply", "-f", "-", home=tmp_path, cwd=tmp_path, stdin="type: task\n")
    assert "Cannot read configuration from stdin if -y/--yes is not specified" in result.stderr


def test_apply_configuration_error_has_file_and_line(tmp_path):
    (tmp_path / "bad.dstack.yml").write_text("type: task\ncommands:\n  - echo\nresources:\n"
                                             "  gpu: A100:40XB\n")
    result = dstack("apply", "-f", "bad.dstack.yml", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("bad.dstack.yml:5: resources.gpu:"), result.stderr
    assert "Traceback" not in result.stderr


def test_apply_bad_run_name_fails_before_any_request(tmp_path):
    (tmp_path / "t.dstack.yml").write_text("type: task\ncommands: [echo]\n")
    env = {"DSTACK_SERVER_URL": "http://127.0.0.1:9", "DSTACK_TOKEN": "t",
           "DSTACK_PROJECT": "main"}
    result = dstack("apply", "-f", "t.dstack.yml", "-n", "Bad_Name", home=tmp_path,
                    cwd=tmp_path, env=env)
    assert result.returncode == 1 and "Invalid run name 'Bad_Name'" in result.stderr


def test_apply_unset_env_is_an_error(tmp_path):
    (tmp_path / "t.dstack.yml").write_text("type: task\ncommands: [echo]\nenv: [MISSING_X]\n")
    result = dstack("apply", "-f", "t.dstack.yml", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "Environment variable MISSING_X is not set"


def test_project_commands(tmp_path):
    from dstack.client_config import add_project

    os.environ["HOME"], old = str(tmp_path), os.environ.get("HOME")
    try:
        add_project("main", "http://127.0.0.1:3000", "tok")
        add_project("other", "http://127.0.0.1:3001", "tok", default=False)
    finally:
        os.environ["HOME"] = old or ""
    result = dstack("project", "list", home=tmp_path)
    assert "PROJECT" in result.stdout and "other" in result.stdout
    assert dstack("project", "set-default", "other", home=tmp_path).stdout.strip() == "OK"
    result = dstack("project", "set-default", "zz", home=tmp_path)
    assert result.returncode == 1 and "Project 'zz' not found" in result.stderr
    result = dstack("project", "delete", "--name", "main", "-y", home=tmp_path)
    assert result.stdout.strip() == "OK"


def test_schema_is_json(tmp_path):
    result = dstack("schema", home=tmp_path)
    assert result.returncode == 0
    assert isinstance(json.loads(result.stdout), dict)
