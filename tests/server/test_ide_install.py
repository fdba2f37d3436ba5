"""The IDE server pre-install of dev environments: URLs and folders per IDE and arch, the
command composed into the job, and that command run for real by `sh` against a local HTTP
server (curl, wget and python3 each as the only downloader; 404; an unknown machine type;
a second run that must not download again)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dstack.models.configurations import parse_configuration
from dstack.server.services.ide_install import (
    build_dir,
    download_url,
    install_command,
)
from dstack.server.services.jobspecs import build_job_specs
from ide_builds import Files, server_tarball

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("ide", "version", "arch", "url"),
    [
        (
            "vscode",
            COMMIT,
            "x64",
            f"https://update.code.visualstudio.com/commit:{COMMIT}/server-linux-x64/stable",
        ),
        (
            "vscode",
            COMMIT,
            "arm64",
            f"https://update.code.visualstudio.com/commit:{COMMIT}/server-linux-arm64/stable",
        ),
        (
            "cursor",
            COMMIT,
            "x64",
            f"https://cursor.blob.core.windows.net/remote-releases/{COMMIT}/vscode-reh-linux-x64.tar.gz",
        ),
        (
            "cursor",
            COMMIT,
            "arm64",
            f"https://cursor.blob.core.windows.net/remote-releases/{COMMIT}/vscode-reh-linux-arm64.tar.gz",
        ),
        (
            "windsurf",
            f"1.9.2@{COMMIT}",
            "x64",
            f"https://windsurf-stable.codeiumdata.com/linux-reh-x64/stable/{COMMIT}"
            "/windsurf-reh-linux-x64-1.9.2.tar.gz",
        ),
        (
            "windsurf",
            f"1.9.2@{COMMIT}",
            "arm64",
            f"https://windsurf-stable.codeiumdata.com/linux-reh-arm64/stable/{COMMIT}"
            "/windsurf-reh-linux-arm64-1.9.2.tar.gz",
        ),
    ],
)
def test_download_url(ide: str, version: str, arch: str, url: str) -> None:
    assert download_url(ide, version, arch, environ={}) == url


@pytest.mark.parametrize(
    ("ide", "version", "folder"),
    [
        ("vscode", COMMIT, f".vscode-server/bin/{COMMIT}"),
        ("cursor", COMMIT, f".cursor-server/bin/{COMMIT}"),
        ("windsurf", f"1.9.2@{COMMIT}", f".windsurf-server/bin/{COMMIT}"),
    ],
)
def test_build_dir_is_named_by_the_commit(ide: str, version: str, folder: str) -> None:
    assert build_dir(ide, version) == folder


def test_url_template_override_per_ide() -> None:
    env = {"DSTACK_VSCODE_SERVER_URL_TEMPLATE": "http://mirror/{commit}/{arch}/{version}.tgz"}
    assert download_url("vscode", "c1", "arm64", env) == "http://mirror/c1/arm64/c1.tgz"
    # Another IDE's variable does not apply.
    assert download_url("cursor", "c1", "x64", env).startswith("https://cursor.blob")


@pytest.mark.parametrize(
    ("ide", "version"), [(None, None), ("vscode", None), ("zed", "1.0"), ("cursor", "")]
)
def test_nothing_to_install(ide: str | None, version: str | None) -> None:
    assert install_command(ide, version, environ={}) is None


@pytest.mark.parametrize("version", ["../../etc", "a b", "$(reboot)", ".hidden", "x/y"])
def test_a_version_that_is_no_folder_name_only_warns(version: str) -> None:
    command = install_command("vscode", version, environ={})
    assert command is not None and command.startswith("echo ")
    assert "curl" not in command
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("dstack: warning: not pre-installing the VS Code server")


def job_commands(conf: dict[str, Any]) -> list[str]:
    (job,) = build_job_specs("dev", parse_configuration(conf), None)
    return job.commands


def test_dev_environment_without_version_downloads_nothing() -> None:
    script = job_commands({"type": "dev-environment", "ide": "vscode", "init": ["echo hi"]})[2]
    assert script.startswith("echo hi && ")
    assert "vscode-server" not in script and "curl" not in script


def test_dev_environment_with_version_installs_before_setup_and_init(monkeypatch) -> None:
    monkeypatch.delenv("DSTACK_VSCODE_SERVER_URL_TEMPLATE", raising=False)
    conf = {
        "type": "dev-environment",
        "ide": "vscode",
        "version": COMMIT,
        "setup": ["echo setup"],
        "init": ["echo init"],
    }
    script = job_commands(conf)[2]
    install = install_command("vscode", COMMIT)
    assert install is not None
    assert script.startswith(install + " && echo setup && echo init && ")
    assert "update.code.visualstudio.com/commit:" + COMMIT in install


def test_the_server_environment_overrides_the_url(monkeypatch) -> None:
    monkeypatch.setenv("DSTACK_CURSOR_SERVER_URL_TEMPLATE", "http://127.0.0.1:9/{commit}.tgz")
    script = job_commands({"type": "dev-environment", "ide": "cursor", "version": "c0ffee"})[2]
    assert "http://127.0.0.1:9/c0ffee.tgz" in script
    assert "cursor.blob" not in script


# --- the composed command, run by sh ---------------------------------------------------------


@pytest.fixture
def files() -> Iterator[Files]:
    srv = Files({f"/vscode/{COMMIT}/x64/server.tar.gz": server_tarball()})
    try:
        yield srv
    finally:
        srv.close()


BASE_TOOLS = ("sh", "mkdir", "rm", "mv", "touch", "tar", "gzip", "tr", "cat")


def tool_dir(tmp_path: Path, fetcher: str | None, uname: str | None = None) -> Path:
    """A PATH holding only the basics and one downloader, so each fallback gets its turn."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    names = [*BASE_TOOLS, *([] if uname else ["uname"])]
    for name in names:
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"needs {name}")
        os.symlink(found, bindir / name)
    if fetcher == "python3":
        os.symlink(sys.executable, bindir / "python3")
    elif fetcher is not None:
        found = shutil.which(fetcher)
        if found is None:
            pytest.skip(f"needs {fetcher}")
        os.symlink(found, bindir / fetcher)
    if uname:
        (bindir / "uname").write_text(f"#!/bin/sh\necho {uname}\n")
        (bindir / "uname").chmod(0o755)
    return bindir


def run_install(
    home: Path, bindir: Path, files: Files, version: str = COMMIT
) -> subprocess.CompletedProcess[str]:
    template = files.base + "/vscode/{commit}/{arch}/server.tar.gz"
    env = {"DSTACK_VSCODE_SERVER_URL_TEMPLATE": template}
    command = install_command("vscode", version, environ=env)
    assert command is not None
    return subprocess.run(
        [str(bindir / "sh"), "-c", command],
        env={"HOME": str(home), "PATH": str(bindir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,  # never fails the job
    )


@pytest.mark.parametrize("fetcher", ["curl", "wget", "python3"])
def test_installs_with_each_downloader_and_only_once(
    tmp_path: Path, files: Files, fetcher: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    bindir = tool_dir(tmp_path, fetcher, uname="x86_64")
    out = run_install(home, bindir, files)
    target = home / ".vscode-server" / "bin" / COMMIT
    assert out.stdout.strip() == f"dstack: pre-installed the VS Code server in {target}"
    assert (target / "bin" / "code-server").read_text() == "#!/bin/sh\necho stub-server\n"
    assert os.access(target / "bin" / "code-server", os.X_OK)
    assert (target / "product.json").is_file()
    assert (target / "0").is_file()  # the marker Remote-SSH setups write
    assert sorted(p.name for p in (home / ".vscode-server").iterdir()) == ["bin"]
    assert len(files.requests) == 1
    again = run_install(home, bindir, files)
    assert again.stdout == "" and len(files.requests) == 1  # already there: no download


@pytest.mark.parametrize("fetcher", ["curl", "wget", "python3"])
def test_a_missing_build_warns_in_one_line_and_leaves_nothing(
    tmp_path: Path, files: Files, fetcher: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    out = run_install(home, tool_dir(tmp_path, fetcher, uname="x86_64"), files, "feedbeef")
    lines = out.stdout.splitlines()
    assert len(lines) == 1, out.stdout
    assert lines[0].startswith("dstack: warning: could not pre-install the VS Code server (")
    assert "/vscode/feedbeef/x64/server.tar.gz" in lines[0]
    assert lines[0].endswith("the IDE will install it on first connect")
    assert out.stderr == ""
    assert list((home / ".vscode-server").iterdir()) == [home / ".vscode-server" / "bin"]
    assert list((home / ".vscode-server" / "bin").iterdir()) == []


def test_arm64_hosts_fetch_the_arm64_build(tmp_path: Path, files: Files) -> None:
    files.routes[f"/vscode/{COMMIT}/arm64/server.tar.gz"] = server_tarball()
    home = tmp_path / "home"
    home.mkdir()
    run_install(home, tool_dir(tmp_path, "python3", uname="aarch64"), files)
    assert files.requests == [f"/vscode/{COMMIT}/arm64/server.tar.gz"]
    assert (home / ".vscode-server" / "bin" / COMMIT / "0").is_file()


def test_unknown_machine_type_and_no_downloader_only_warn(tmp_path: Path, files: Files) -> None:
    home = tmp_path / "home"
    home.mkdir()
    out = run_install(home, tool_dir(tmp_path, None, uname="riscv64"), files)
    assert "no server build for machine type riscv64" in out.stdout
    (tmp_path / "bin").rename(tmp_path / "old-bin")
    out = run_install(home, tool_dir(tmp_path, None, uname="x86_64"), files)
    assert "no curl, wget or python3 to download" in out.stdout
    assert files.requests == []
    assert not (home / ".vscode-server" / "bin" / COMMIT).exists()


def _wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """The command is `sh -c '<script>' NAME`: the outer shell, when dash does not exec the
    inner one, dies of the SIGTERM at once while the inner one is still in its trap; the
    job's process group is gone only once the trap has cleaned up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process group {pgid} still alive {timeout:g}s after SIGTERM")


def test_stopped_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGTERM to the job's process group while the download hangs: no temporary folder or
    half-written archive stays in the IDE's folder."""
    sent_headers = threading.Event()
    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"x" * 1000)
            self.wfile.flush()
            sent_headers.set()
            release.wait(30)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    home = tmp_path / "home"
    home.mkdir()
    env = {"DSTACK_VSCODE_SERVER_URL_TEMPLATE": f"http://127.0.0.1:{httpd.server_address[1]}/x"}
    command = install_command("vscode", COMMIT, environ=env)
    assert command is not None
    proc = subprocess.Popen(
        ["sh", "-c", command],
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        start_new_session=True,
    )
    try:
        assert sent_headers.wait(30)
        folder = home / ".vscode-server"
        assert any(p.name.startswith(".dstack-") for p in folder.iterdir())
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        _wait_group_gone(proc.pid)
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
    assert sorted(p.name for p in folder.iterdir()) == ["bin"]
    assert list((folder / "bin").iterdir()) == []
