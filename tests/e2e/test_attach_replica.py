"""`dstack attach --replica N` on a two-replica service: the SSH alias `<run>-0-N` lands in that
replica's job (told apart by the port it was given), and replica 0 keeps the plain alias."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .harness import Server, free_port_block, wait_until
from .services_util import apply_detached, service, service_dir
from .test_ssh import Background, ssh, stop

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("ssh", "ssh-keygen"))
        or not any(Path(p).exists() for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd")),
        reason="needs OpenSSH (ssh, ssh-keygen, sshd)",
    ),
]


def test_attach_to_each_replica_of_a_service(server: Server, tmp_path: Path) -> None:
    d = service_dir(tmp_path)
    port = free_port_block(4)
    apply_detached(server, d, "two-reps", service("two-reps", port=port, extra="replicas: 2\n"))
    try:

        def both_running() -> bool:
            jobs = server.run("two-reps")["jobs"]
            return len(jobs) == 2 and all(
                j["job_submissions"][-1]["status"] == "running" for j in jobs
            )

        wait_until(both_running, timeout=60, what="two running replicas")
        for replica, alias in ((1, "two-reps-0-1"), (0, "two-reps")):
            attach = Background(
                server, "attach", "two-reps", "--replica", str(replica), "-y", cwd=d
            )
            try:
                out = attach.wait_for("Press Ctrl+C to detach...")
                assert f"replica={replica} job=0" in out, out
                r = ssh(server, alias, "echo $DSTACK_SERVICE_PORT")
                assert r.returncode == 0, r.stderr
                assert r.stdout.strip() == str(port + replica)
                assert attach.interrupt() == 0
            finally:
                attach.kill()
    finally:
        stop(server, "two-reps")
