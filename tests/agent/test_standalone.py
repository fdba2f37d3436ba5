"""The agent stands alone: stdlib only, Python 3.9 syntax, runnable as one zipapp."""

from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import SRC, AgentProcess

AGENT_DIR = Path(SRC) / "dstack" / "agent"
MODULES = sorted(
    "dstack.agent" if p.name == "__init__.py" else f"dstack.agent.{p.stem}"
    for p in AGENT_DIR.glob("*.py")
    if p.name != "__main__.py"
)

HIDE_THIRD_PARTY = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in sys.stdlib_module_names and top != "dstack":
            raise ImportError(f"non-stdlib import blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
"""

CHECK_IMPORTS = """
import importlib, sys
sys.path.insert(0, {src!r})
for name in {modules!r}:
    importlib.import_module(name)
outside = [m for m in sys.modules if m.startswith("dstack.") and not m.startswith("dstack.agent")]
assert not outside, outside
print("ok", len({modules!r}))
"""


def test_all_modules_import_with_third_party_hidden() -> None:
    assert "dstack.agent.supervisor" in MODULES and "dstack.agent.zipapp" in MODULES
    code = HIDE_THIRD_PARTY + CHECK_IMPORTS.format(src=SRC, modules=MODULES)
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_sources_import_only_stdlib_and_the_agent() -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    for path in AGENT_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.startswith("dstack"):
                    assert name == "dstack.agent" or name.startswith("dstack.agent."), (path, name)
                else:
                    assert name.partition(".")[0] in allowed, (path, name)


def _python39() -> str | None:
    candidates = [shutil.which("python3.9")]
    candidates += glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))
    for candidate in filter(None, candidates):
        proc = subprocess.run([candidate, "--version"], capture_output=True, text=True)
        if proc.returncode == 0:
            return candidate
    return None


def test_imports_on_python39_without_site_packages() -> None:
    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 interpreter on this machine")
    code = CHECK_IMPORTS.format(src=SRC, modules=MODULES)
    proc = subprocess.run([python, "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def _build_zipapp(tmp_path: Path) -> Path:
    target = tmp_path / "dstack-agent.pyz"
    proc = subprocess.run(
        [sys.executable, "-m", "dstack.agent.zipapp", str(target)],
        env=dict(os.environ, PYTHONPATH=SRC),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return target


@pytest.mark.parametrize("interpreter", ["current", "python3.9"])
def test_zipapp_runs_jobs(tmp_path: Path, interpreter: str) -> None:
    python = sys.executable if interpreter == "current" else _python39()
    if python is None:
        pytest.skip("no Python 3.9 interpreter on this machine")
    pyz = _build_zipapp(tmp_path)
    agent = AgentProcess(tmp_path / "home")
    # -I: no PYTHONPATH, no site-packages; everything must come from the .pyz.
    agent.start([python, "-I", str(pyz), "--home", str(agent.home)])
    try:
        assert agent.ok("GET", "/api/healthcheck")["service"] == "dstack-agent"
        agent.shell("z", "echo from-zipapp")
        assert agent.wait_finished("z")["status"] == "done"
        assert agent.output("z") == "from-zipapp\n"
    finally:
        agent.cleanup_jobs()
        agent.kill()
