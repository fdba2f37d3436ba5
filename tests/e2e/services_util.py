"""Helpers of the service end-to-end tests: a server of their own, a project directory with the
test app, and service configurations."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from .harness import Server, free_port_block, wait_until, write_config

APPS = Path(__file__).parent / "apps"
# The Python a job runs its app with: the host's, on PATH. Not this venv's (sys.executable),
# which links into root's home, where the local backend's jobs (run as dstack-job) cannot go.
JOB_PYTHON = "python3"


def service_dir(tmp_path: Path) -> Path:
    d = tmp_path / "svc"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(APPS / "svc_app.py", d / "svc_app.py")
    return d


def shared_dir(request: pytest.FixtureRequest) -> Path:
    """A folder the job's user can read (dstack-job cannot enter root's tmp_path), removed
    after the test."""
    d = Path(tempfile.mkdtemp(prefix="dstack-e2e-", dir="/var/tmp"))
    d.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def service(name: str, port: int | None = None, extra: str = "", env: dict | None = None) -> str:
    port = port or free_port_block()
    env_lines = "".join(f"  - {k}={v}\n" for k, v in (env or {}).items())
    return (
        f"type: service\nname: {name}\nport: {port}\n"
        f"commands:\n  - {json.dumps(JOB_PYTHON + ' svc_app.py')}\n"
        "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"
        + (f"env:\n{env_lines}" if env_lines else "")
        + extra
    )


def apply_detached(server: Server, directory: Path, name: str, text: str) -> None:
    write_config(directory, f"{name}.dstack.yml", text)
    r = server.cli("apply", "-f", f"{name}.dstack.yml", "-y", "-d", cwd=directory)
    assert r.returncode == 0, r.stdout + r.stderr


def proxy_url(server: Server, name: str, path: str = "") -> str:
    return f"{server.url}/proxy/services/main/{name}/{path}"


def ready_replicas(server: Server, name: str) -> list[dict]:
    run = server.run(name)
    out = []
    for job in run["jobs"]:
        sub = job["job_submissions"][-1]
        if sub["status"] == "running":
            out.append(sub)
    return out


def wait_serving(server: Server, name: str, timeout: float = 60) -> None:
    import httpx

    def ok() -> bool:
        try:
            r = httpx.get(proxy_url(server, name), headers=auth(server), timeout=5)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    wait_until(ok, timeout=timeout, interval=0.3, what=f"service {name} to answer")


def auth(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def service_server(home: Path, **env: str) -> Server:
    srv = Server(
        home=home,
        extra_env={
            "DSTACK_SERVICE_CLIENT_TIMEOUT": "3",
            "DSTACK_SERVICE_HOLD_SECONDS": "60",
            "DSTACK_SERVICE_UNHEALTHY_COOLDOWN": "5",
            "DSTACK_SERVICE_MAX_BODY": str(1024 * 1024),
            **env,
        },
    )
    srv.start()
    return srv
