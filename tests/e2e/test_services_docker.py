"""A service whose replica runs in a container: the proxy reaches it through the host port the
agent published (skipped without Docker)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from .harness import Server
from .services_util import apply_detached, auth, proxy_url, wait_serving

pytestmark = pytest.mark.docker


def test_service_in_a_container_is_reached_through_its_published_port(
    server: Server, tmp_path: Path, busybox_image: str
) -> None:
    d = tmp_path / "dsvc"
    d.mkdir()
    conf = (
        f"type: service\nname: in-docker-svc\nimage: {busybox_image}\nport: 8000\n"
        "commands:\n"
        "  - busybox mkdir -p /tmp/www\n"
        "  - echo hello-from-docker > /tmp/www/index.html\n"
        "  - busybox httpd -f -p 8000 -h /tmp/www\n"
        "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"
    )
    apply_detached(server, d, "in-docker-svc", conf)
    try:
        wait_serving(server, "in-docker-svc", timeout=90)
        r = httpx.get(proxy_url(server, "in-docker-svc", "index.html"), headers=auth(server))
        assert r.status_code == 200 and r.text.strip() == "hello-from-docker"
        sub = server.run("in-docker-svc")["jobs"][0]["job_submissions"][-1]
        ports = sub["job_runtime_data"]["ports"]
        assert "8000" in {str(k) for k in ports}  # the agent's published port, copied over
    finally:
        server.api("/api/project/main/runs/stop", {"runs_names": ["in-docker-svc"], "abort": True})
        server.wait_status("in-docker-svc", "terminated", "failed", "done", timeout=60)
