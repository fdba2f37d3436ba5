"""`dstack ps` against the stub server: which runs it shows and what it asks for. The default
view asks for the active runs only and, when there are none, for the latest run (the
reference's two requests), instead of a page of 100 runs filtered in the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .stub_server import StubState, serve

TASK = {"type": "task", "commands": ["true"]}


def _ps(state: StubState, tmp_path, *args: str) -> str:
    server, url = serve(state)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
        env.update(HOME=str(tmp_path), DSTACK_SERVER_URL=url, DSTACK_TOKEN="t",
                   DSTACK_PROJECT="main", COLUMNS="200")  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "dstack.cli.main", "ps", *args],
            capture_output=True, text=True, env=env, timeout=60,
        )
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    return result.stdout


def _state(*runs: tuple[str, str]) -> StubState:
    state = StubState()
    for name, status in runs:  # oldest first
        state.runs[name] = state.make_run({"run_name": name, "configuration": TASK}, status)
    return state


def _names(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines()[1:] if line.strip()]


@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_default_shows_the_active_runs_in_one_request(tmp_path, fmt) -> None:
    state = _state(("old-active", "running"), ("finished", "done"), ("new-active", "submitted"))
    out = _ps(state, tmp_path, *fmt)
    names = [r["run_spec"]["run_name"] for r in json.loads(out)["runs"]] if fmt else _names(out)
    assert names == ["new-active", "old-active"]
    assert [(r["only_active"], r["limit"]) for r in state.list_requests] == [(True, 100)]


def test_default_without_active_runs_shows_the_latest(tmp_path) -> None:
    state = _state(("first", "done"), ("second", "failed"))
    assert _names(_ps(state, tmp_path)) == ["second"]
    asked = [(r["only_active"], r["limit"]) for r in state.list_requests]
    assert asked == [(True, 100), (False, 1)]


def test_all_and_last(tmp_path) -> None:
    state = _state(("a", "done"), ("b", "running"), ("c", "failed"))
    assert _names(_ps(state, tmp_path, "-a")) == ["c", "b", "a"]
    assert _names(_ps(state, tmp_path, "-n", "2")) == ["c", "b"]
    asked = [(r["only_active"], r["limit"]) for r in state.list_requests]
    assert asked == [(False, 100), (False, 2)]
