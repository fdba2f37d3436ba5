"""`registry_auth` in the agent: validated without echoing the password, and `docker login`
run with the password on stdin (never in argv) into the job's own Docker configuration."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dstack.agent import docker
from dstack.agent.spec import BadRequest, validate_spec

PASSWORD = "pw-sentinel-9f2c"


def _spec(**extra: object) -> dict:
    return {"id": "j1", "runtime": "docker", "image": "ghcr.io/acme/app:1", **extra}


def test_registry_auth_is_kept_and_checked() -> None:
    auth = {"username": "bot", "password": PASSWORD}
    assert validate_spec(_spec(registry_auth=auth))["registry_auth"] == auth
    assert validate_spec(_spec())["registry_auth"] is None
    with pytest.raises(BadRequest) as e:
        validate_spec(_spec(registry_auth={"username": "bot", "password": 5}))
    assert "registry_auth" in str(e.value) and PASSWORD not in str(e.value)


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("ghcr.io/acme/app:1", "ghcr.io"),
        ("localhost:5000/app", "localhost:5000"),
        ("acme/app", None),
        ("ubuntu", None),
    ],
)
def test_the_registry_of_an_image(image: str, registry: str | None) -> None:
    assert docker.registry_of(image) == registry


def _fake_docker(tmp_path: Path, exit_code: int) -> str:
    """A `docker` that records its argv and stdin, then exits with `exit_code`."""
    script = tmp_path / "docker"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {tmp_path}/argv\n'
        f"cat > {tmp_path}/stdin\n"
        'echo "Error response from daemon: unauthorized" >&2\n'
        f"exit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_login_sends_the_password_on_stdin_only(tmp_path: Path) -> None:
    binary = _fake_docker(tmp_path, 0)
    config = tmp_path / "cfg"
    auth = {"username": "bot", "password": PASSWORD}
    assert docker.login(binary, str(config), "ghcr.io/acme/app:1", auth, dict(os.environ)) is None
    argv = (tmp_path / "argv").read_text()
    assert PASSWORD not in argv
    assert argv.split() == ["--config", str(config), "login", "-u", "bot", "--password-stdin",
                            "ghcr.io"]  # fmt: skip
    assert (tmp_path / "stdin").read_text() == PASSWORD


def test_a_failed_login_says_why_without_the_password(tmp_path: Path) -> None:
    binary = _fake_docker(tmp_path, 1)
    auth = {"username": "bot", "password": PASSWORD}
    error = docker.login(binary, str(tmp_path / "cfg"), "acme/app", auth, dict(os.environ))
    assert (
        error
        == "docker login to Docker Hub as bot failed: Error response from daemon: unauthorized"
    )
