"""Pulling a private image with the job's `registry_auth`.

The credentials go into a Docker client config of the job's own (a 0700 directory, removed
after the pull), never onto a command line, into the environment of `docker run` or into the
job's logs. The user's own client config is copied into it (contexts, proxies), minus any
credential store, which would otherwise answer instead of the given credentials.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

DOCKER_HUB = "https://index.docker.io/v1/"
PULL_TIMEOUT = 1800.0


def registry_of(image: str) -> str:
    """The registry an image reference names (Docker Hub when its first part is no host)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


def client_config(image: str, auth: dict[str, str], base: dict[str, Any] | None) -> dict[str, Any]:
    config = {k: v for k, v in (base or {}).items() if k not in ("credsStore", "credHelpers")}
    token = base64.b64encode(f"{auth['username']}:{auth['password']}".encode()).decode()
    config["auths"] = {registry_of(image): {"auth": token}}
    return config


def _user_config() -> dict[str, Any] | None:
    folder = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    try:
        value = json.loads(Path(folder, "config.json").read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def pull(image: str, auth: dict[str, str], docker_bin: str) -> str | None:
    """Pull `image` with `auth`; None when done, else the reason (from docker's own stderr,
    which never contains the password)."""
    folder = tempfile.mkdtemp(prefix="dstack-pull-")
    try:
        path = Path(folder, "config.json")
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(client_config(image, auth, _user_config()), f)
        env = dict(os.environ, DOCKER_CONFIG=folder)
        try:
            proc = subprocess.run(
                [docker_bin, "pull", "--quiet", image],
                env=env,
                capture_output=True,
                text=True,
                timeout=PULL_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as e:
            return f"cannot pull image {image}: {e}"
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return f"cannot pull image {image} with registry_auth: " + " ".join(tail)
        return None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
