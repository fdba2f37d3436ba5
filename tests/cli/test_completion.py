"""`dstack completion bash|zsh`: a script generated from the parser tree, loaded by a real
bash (`complete -p dstack`) and driven with COMP_WORDS as bash would on a tab."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dstack.cli.completion_script import walk
from dstack.cli.main import COMMANDS, build_parser

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PATH with a `dstack` shim (the script calls `dstack completion --names`), a HOME with
    two projects, and no DSTACK_* settings of the machine running the tests."""
    root = tmp_path_factory.mktemp("completion")
    bin_dir, home = root / "bin", root / "home"
    bin_dir.mkdir()
    (home / ".dstack").mkdir(parents=True)
    shim = bin_dir / "dstack"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m dstack.cli.main "$@"\n')
    shim.chmod(0o755)
    (home / ".dstack" / "config.yml").write_text(
        "projects:\n- {name: main, url: 'http://127.0.0.1:9', token: t, default: true}\n"
        "- {name: research, url: 'http://127.0.0.1:9', token: t}\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    return {**base, "HOME": str(home), "PATH": f"{bin_dir}:{base.get('PATH', '')}"}


def bash(script: str, env: dict[str, str]) -> str:
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def complete(env: dict[str, str], *words: str) -> list[str]:
    quoted = " ".join(f"'{w}'" for w in words)
    out = bash(
        "source <(dstack completion bash)\n"
        f"COMP_WORDS=(dstack {quoted}); COMP_CWORD={len(words)}; COMPREPLY=()\n"
        '_dstack_completion; printf "%s\\n" "${COMPREPLY[@]}"\n',
        env,
    )
    return [line for line in out.splitlines() if line]


def test_script_registers_the_completion(env: dict[str, str]) -> None:
    out = bash("source <(dstack completion bash); complete -p dstack", env)
    assert out.strip() == "complete -o default -F _dstack_completion dstack"


def test_commands_subcommands_and_options(env: dict[str, str]) -> None:
    assert set(complete(env, "")) >= set(COMMANDS)
    assert complete(env, "ap") == ["apply"]
    assert complete(env, "fleet", "de") == ["delete", "delete-instance"]
    assert complete(env, "apply", "--fi") == ["--file"]
    assert "--abort" in complete(env, "stop", "--")
    assert complete(env, "completion", "") == ["bash", "zsh"]


def test_values_of_options_are_skipped_and_completed(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "train.dstack.yml").write_text("type: task\n")
    assert complete(env, "apply", "-f", f"{tmp_path}/tr") == [f"{tmp_path}/train.dstack.yml"]
    # `-f FILE` is a value, not a subcommand: the options after it are still apply's.
    assert complete(env, "apply", "-f", "x.yml", "--det") == ["--detach"]
    assert complete(env, "ps", "--project", "re") == ["research"]
    assert complete(env, "project", "set-default", "") == ["main", "research"]


def test_names_from_an_unreachable_server_complete_to_nothing(env: dict[str, str]) -> None:
    assert complete(env, "stop", "") == []


def test_every_command_and_flag_of_the_tree_is_in_the_script() -> None:
    parser = build_parser([], full=True)
    nodes = {n.path: n for n in walk(parser)}
    assert {p.split()[1] for p in nodes if len(p.split()) > 1} == set(COMMANDS) | {"destroy"}
    assert "--max-offers" in nodes["dstack apply"].options


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")
def test_zsh_script_loads(env: dict[str, str]) -> None:
    result = subprocess.run(["zsh", "-fc", "source <(dstack completion zsh); echo ok"],
                            capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert result.stdout.strip() == "ok", result.stderr


def test_shell_is_required(env: dict[str, str]) -> None:
    result = subprocess.run(["dstack", "completion"], capture_output=True, text=True, env=env,
                            timeout=60)  # fmt: skip
    assert result.returncode == 1 and "bash|zsh" in result.stderr
