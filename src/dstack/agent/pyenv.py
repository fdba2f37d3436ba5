"""`python: "3.12"` on the process runtime: that Python, found on the host, is the job's
`python`/`python3`.

Found as `python3.12` on the agent's PATH, else through `uv python find 3.12` when `uv` is
installed. The job gets a directory of links (`python`, `python3`, `python3.12`) first on its
PATH. A host without it fails the job naming the versions it has; the server refuses such a
plan earlier from the host's report (`versions()`, in host_info as `pythons`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from dstack.agent import jobuser
from dstack.agent.util import CODE_DIR, read_json, write_json_atomic

PYENV_FILE = "python.json"
_NAME_RE = re.compile(r"^python(3\.\d{1,2})$")
UV_TIMEOUT = 20.0


class PythonError(Exception):
    """The host has no such Python; the message names the host and what it has."""


def _folders(path: str | None) -> list[str]:
    """PATH without version-manager shims (pyenv, asdf): a shim named python3.12 exists for
    every version the manager has installed, but only runs in a shell that selected it."""
    raw = (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep)
    return [f for f in raw if f and os.path.basename(f.rstrip("/")) != "shims"]


def versions(path: str | None = None) -> list[str]:
    """`3.X` versions with a `python3.X` executable on PATH, sorted."""
    found = set()
    for folder in _folders(path):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            match = _NAME_RE.match(name)
            if match and os.access(os.path.join(folder, name), os.X_OK):
                found.add(match.group(1))
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def uv_available() -> bool:
    return shutil.which("uv") is not None


def find(version: str) -> str | None:
    """The interpreter for `version`: on PATH, else the one `uv` has installed."""
    direct = shutil.which(f"python{version}", path=os.pathsep.join(_folders(None)))
    if direct:
        return direct
    uv = shutil.which("uv")
    if uv is None:
        return None
    try:
        out = subprocess.run(
            [uv, "python", "find", version],
            capture_output=True,
            text=True,
            timeout=UV_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    path = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout else ""
    return path if path and os.access(path, os.X_OK) else None


def _missing(version: str, host: str) -> str:
    have = ", ".join(versions()) or "none"
    uv = "uv has none installed" if uv_available() else "no uv"
    return (
        f"python {version} is not on {host} (it has python {have} on PATH; {uv}); "
        f"install python{version} there, or set `image` to run in a container"
    )


def prepare(job_dir: Path, spec: dict[str, Any]) -> None:
    """Link the job's Python into a directory of its own (beside its code, so a job that runs
    as another user can reach it); raises PythonError."""
    version = spec.get("python")
    if not version or spec.get("runtime") != "process":
        return
    host = spec.get("host_label") or socket.gethostname()
    interpreter = find(version)
    if interpreter is None:
        raise PythonError(_missing(version, host))
    ident = jobuser.identity(job_dir)
    real = os.path.realpath(interpreter)
    if ident and ident["uid"] != os.geteuid() and not jobuser.reachable(real, ident):
        raise PythonError(
            f"python {version} on {host} is {real}, which user {ident['name']} (the job's) "
            f"cannot reach; install it where every user can, or set `user: root`"
        )
    code = Path(os.path.realpath(job_dir / CODE_DIR))
    bin_dir = code.parent / f"{code.name}-python"
    bin_dir.mkdir(mode=0o755, exist_ok=True)
    for name in ("python", "python3", f"python{version}"):
        link = bin_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(interpreter)
    write_json_atomic(job_dir / PYENV_FILE, {"bin_dir": str(bin_dir), "python": interpreter})


def path_env(job_dir: Path, path: str) -> str:
    """PATH with the job's Python first (unchanged without `python`)."""
    info = read_json(job_dir / PYENV_FILE)
    if not isinstance(info, dict) or not info.get("bin_dir"):
        return path
    return info["bin_dir"] + os.pathsep + path


def cleanup(job_dir: Path) -> None:
    info = read_json(job_dir / PYENV_FILE)
    if isinstance(info, dict) and info.get("bin_dir", "").endswith(f"{CODE_DIR}-python"):
        shutil.rmtree(info["bin_dir"], ignore_errors=True)
