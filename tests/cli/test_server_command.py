"""`dstack server` up to serving, in a subprocess with uvicorn's `run` replaced: what it checks
before it listens. (The start itself is timed in bench/bench_cold.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

UP_TO_SERVING = (
    "import uvicorn\n"
    "def serve(app, **kwargs):\n"
    "    print('SERVING', flush=True)\n"
    "uvicorn.run = serve\n"
    "from dstack.cli.main import main\n"
    "main(['server', '--port', '1'])\n"
)


def _start(home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-c", UP_TO_SERVING], capture_output=True, text=True, env=env, timeout=120
    )


def test_an_invalid_config_stops_the_server_naming_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / ".dstack" / "server" / "config.yml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "projects:\n  - name: main\n    backends:\n      - type: aws\n        creds: 7\n"
    )
    result = _start(tmp_path)
    assert result.returncode == 1
    assert "SERVING" not in result.stdout
    assert f"{config}:5: projects[0].backends[0].creds" in result.stderr


def test_a_valid_start_reaches_serving(tmp_path: Path) -> None:
    result = _start(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stdout
