"""Runtime fields on the docker runtime: `user` (`--user`), `privileged`, and `files`
bind-mounted in the container (skipped without Docker; images are built locally)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .harness import Server, write_config

pytestmark = pytest.mark.docker

RES = "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"
CAP_SYS_ADMIN = 21


def _status(stdout: str, field: str) -> str:
    line = next(ln for ln in stdout.splitlines() if ln.startswith(field + ":"))
    return line.split(":", 1)[1].strip()


def test_user_and_files_in_a_container(
    server: Server, project_dir: Path, busybox_image: str
) -> None:
    (project_dir / "settings.ini").write_text("in-container-setting\n")
    write_config(
        project_dir,
        "du.dstack.yml",
        f'type: task\nname: docker-user\nimage: {busybox_image}\nuser: "1000:1000"\n'
        "files:\n  - settings.ini:conf/settings.ini\n"
        "commands:\n  - cat /proc/self/status\n  - cat conf/settings.ini\n" + RES,
    )
    r = server.cli("apply", "-f", "du.dstack.yml", "-y", cwd=project_dir, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _status(r.stdout, "Uid").split()[0] == "1000"
    assert "in-container-setting" in r.stdout


def _engine_runs_privileged(image: str) -> str | None:
    """Why this machine's Docker engine cannot start a privileged container (None: it can). A
    sandboxed engine (Docker inside a container without all capabilities) refuses it with
    "unable to apply caps": that is the machine, not dstack."""
    done = subprocess.run(
        ["docker", "run", "--rm", "--privileged", image, "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


def test_privileged_container_has_all_capabilities(
    server: Server, project_dir: Path, busybox_image: str
) -> None:
    why = _engine_runs_privileged(busybox_image)
    if why:
        pytest.skip(f"this Docker engine cannot run a privileged container: {why}")
    write_config(
        project_dir,
        "dp.dstack.yml",
        f"type: task\nname: docker-priv\nimage: {busybox_image}\nprivileged: true\n"
        "commands:\n  - cat /proc/self/status\n" + RES,
    )
    r = server.cli("apply", "-f", "dp.dstack.yml", "-y", cwd=project_dir, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert int(_status(r.stdout, "CapEff"), 16) & (1 << CAP_SYS_ADMIN)
