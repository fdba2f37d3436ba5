"""A service on an SSH fleet host: the replica runs as the host's user (process runtime) and
listens on the host's loopback only; the server's proxy reaches it through a local forward over
the host's pooled SSH connection."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from ..harness import Server, wait_until, write_config
from ..services_util import auth, proxy_url
from . import hosts as sshhosts
from .test_fleets import apply_fleet, assert_clean, fleet_yaml

pytestmark = pytest.mark.skipif(sshhosts.available() is not None, reason=str(sshhosts.available()))

APP = (
    "echo hello-from-$(whoami) > index.html && "
    "exec python3 -m http.server $DSTACK_SERVICE_PORT --bind 127.0.0.1"
)


def test_service_on_an_ssh_host_is_reached_through_the_proxy(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
):
    h = hosts.add()
    before = h.home_entries()
    authorized = (h.home / ".ssh" / "authorized_keys").read_text()
    apply_fleet(srv, project_dir, fleet_yaml("onprem", [h], key))

    write_config(
        project_dir,
        "svc.dstack.yml",
        f"type: service\nname: web\nport: 8000\ncommands:\n  - {json.dumps(APP)}\n"
        "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n",
    )
    r = srv.cli("apply", "-f", "svc.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr

    def answers() -> bool:
        try:
            return httpx.get(proxy_url(srv, "web"), headers=auth(srv), timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=90, interval=0.5, what="the service on the SSH host to answer")
    r = httpx.get(proxy_url(srv, "web"), headers=auth(srv), timeout=10)
    assert r.status_code == 200 and r.text.strip() == f"hello-from-{h.name}", r.text
    # More requests reuse the pooled connection's one forward.
    for _ in range(20):
        assert httpx.get(proxy_url(srv, "web"), headers=auth(srv), timeout=10).status_code == 200
    assert httpx.get(proxy_url(srv, "web")).status_code in (401, 403)
    bad = {"Authorization": "Bearer nope"}
    assert httpx.get(proxy_url(srv, "web"), headers=bad).status_code in (401, 403)

    srv.api("/api/project/main/runs/stop", {"runs_names": ["web"], "abort": False})
    srv.wait_status("web", "terminated", "done", "failed", "aborted", timeout=60)
    wait_until(
        lambda: httpx.get(proxy_url(srv, "web"), headers=auth(srv)).status_code == 404,
        timeout=15,
        what="the stopped service to disappear",
    )
    r = srv.cli("fleet", "delete", "onprem", "-y")
    assert r.returncode == 0, r.stderr
    wait_until(
        lambda: srv.api("/api/project/main/fleets/get", {"name": "onprem"}).status_code == 400,
        timeout=30,
        what="fleet gone",
    )
    assert_clean(h, before, authorized)
