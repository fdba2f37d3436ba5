"""A dev environment with `ide` and `version` pre-installs the IDE's server before `init`,
end to end: a real server (its URL template pointed at a loopback HTTP server this test runs),
the local agent on the process runtime, and the CLI.

Jobs on the process runtime of a root server run as the local job user (docs/secrets.md): here
a throwaway account, created by the agent and removed after the module, so the build lands in
its fresh home. A server that is not root runs them as itself, with HOME from the agent, which
the server starts with its own environment: the server's temporary HOME. Either way never the
real one; `init` echoes `$HOME` and the test checks it.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ide_builds import Files, server_tarball

from .harness import Server, wait_until, write_config

pytestmark = pytest.mark.e2e

COMMIT = "e2e0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee00"
MISSING = "e2e0dead0dead0dead0dead0dead0dead0dead00"
JOB_USER = "dstack-e2e-ide"
RESOURCES = "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"


class Builds(Files):
    """Serves the build for both arches at /vscode/<commit>/<arch>/server.tar.gz, else 404."""

    def __init__(self) -> None:
        body = server_tarball(COMMIT)
        super().__init__(
            {f"/vscode/{COMMIT}/{arch}/server.tar.gz": body for arch in ("x64", "arm64")}
        )

    @property
    def template(self) -> str:
        return f"{self.base}/vscode/{{commit}}/{{arch}}/server.tar.gz"


@pytest.fixture(scope="module")
def builds() -> Iterator[Builds]:
    b = Builds()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def ide_server(tmp_path_factory: pytest.TempPathFactory, builds: Builds) -> Iterator[Server]:
    env = {"DSTACK_VSCODE_SERVER_URL_TEMPLATE": builds.template}
    root = os.geteuid() == 0
    if root:
        _drop_user()  # a fresh home: nothing left by an earlier run
        env["DSTACK_LOCAL_JOB_USER"] = JOB_USER
    srv = Server(home=tmp_path_factory.mktemp("ide-home"), extra_env=env)
    srv.start()
    try:
        yield srv
    finally:
        srv.cleanup()
        if root:
            _drop_user()


def _drop_user() -> None:
    subprocess.run(["userdel", "-r", JOB_USER], check=False, capture_output=True)


def job_home(server: Server) -> Path:
    """The HOME the jobs get: the job user's (created by the agent) or the server's."""
    return Path(pwd.getpwnam(JOB_USER).pw_dir) if os.geteuid() == 0 else server.home


def dev_env(name: str, version: str) -> str:
    check = f'"$HOME/.vscode-server/bin/{version}/bin/code-server"'
    return (
        f"type: dev-environment\nname: {name}\nide: vscode\nversion: {version}\n"
        "init:\n"
        '  - echo "job-home=$HOME"\n'
        f"  - if [ -x {check} ]; then echo server-present-before-init; "
        "else echo server-missing-before-init; fi\n" + RESOURCES
    )


def logs_until(server: Server, name: str, text: str) -> str:
    def seen() -> str | None:
        out = server.cli("logs", name).stdout
        return out if text in out else None

    return wait_until(seen, timeout=90, what=f"{text!r} in the logs of {name}")


def stop(server: Server, name: str) -> None:
    server.api("/api/project/main/runs/stop", {"runs_names": [name], "abort": True})
    server.wait_status(name, "terminated", "failed", "done", timeout=60)


def test_the_server_build_is_in_place_before_init_and_fetched_once(
    ide_server: Server, builds: Builds, project_dir: Path
) -> None:
    write_config(project_dir, "ide.dstack.yml", dev_env("ide-pre", COMMIT))
    apply = ide_server.cli_popen("apply", "-f", "ide.dstack.yml", "-y", cwd=project_dir)
    try:
        wait_until(lambda: "To exit, press Ctrl+C." in apply.read(), timeout=90, what="attach")
        out = apply.read()
    finally:
        apply.stop()
    target = job_home(ide_server) / ".vscode-server" / "bin" / COMMIT
    installed = f"dstack: pre-installed the VS Code server in {target}"
    assert installed in out, out
    assert f"job-home={job_home(ide_server)}" in out
    assert "server-present-before-init" in out
    assert out.index(installed) < out.index("server-present-before-init")
    assert "vscode://vscode-remote/ssh-remote+ide-pre/" in out  # the link is unchanged
    assert (target / "bin" / "code-server").read_text() == "#!/bin/sh\necho stub-server\n"
    assert (target / "product.json").is_file() and (target / "0").is_file()
    assert ide_server.run("ide-pre")["status"] == "running"
    stop(ide_server, "ide-pre")
    fetched = [p for p in builds.requests if COMMIT in p]
    assert len(fetched) == 1

    # The next dev environment on the same host and HOME finds it and downloads nothing.
    write_config(project_dir, "again.dstack.yml", dev_env("ide-again", COMMIT))
    r = ide_server.cli("apply", "-f", "again.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    out = logs_until(ide_server, "ide-again", "To exit, press Ctrl+C.")
    assert "server-present-before-init" in out and "pre-installed" not in out
    assert [p for p in builds.requests if COMMIT in p] == fetched
    stop(ide_server, "ide-again")


def test_a_missing_build_warns_and_the_dev_environment_still_runs(
    ide_server: Server, builds: Builds, project_dir: Path
) -> None:
    write_config(project_dir, "gone.dstack.yml", dev_env("ide-gone", MISSING))
    r = ide_server.cli("apply", "-f", "gone.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    out = logs_until(ide_server, "ide-gone", "To exit, press Ctrl+C.")
    warning = [line for line in out.splitlines() if line.startswith("dstack: warning:")]
    assert len(warning) == 1, out
    assert "could not pre-install the VS Code server" in warning[0]
    assert f"/vscode/{MISSING}/" in warning[0] and "404" in warning[0]
    assert "server-missing-before-init" in out
    assert any(MISSING in p for p in builds.requests)
    assert ide_server.wait_status("ide-gone", "running")["status"] == "running"
    assert not (job_home(ide_server) / ".vscode-server" / "bin" / MISSING).exists()
    stop(ide_server, "ide-gone")
