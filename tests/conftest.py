"""Fixtures shared by the agent and end-to-end tests, and the suite's two tiers."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# Folders whose tests start real servers, agents, hosts or engines: the slow tier.
SLOW_TIER = ("e2e", "faults")

BUSYBOX_IMAGE = "dstack-test-busybox:latest"
APPLETS = ["sh", "echo", "sleep", "cat", "ls", "env", "pwd", "true", "false", "httpd", "uname"]


def docker_unavailable() -> str | None:
    """Why Docker tests cannot run here, or None when an engine answers."""
    if shutil.which("docker") is None:
        return "docker CLI not installed"
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"docker info failed: {e}"
    if proc.returncode != 0:
        return f"no Docker engine answers `docker info`: {proc.stderr.strip()[-200:]}"
    return None


def _busybox() -> str | None:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(path).is_file():
            return path
    return None


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Images cannot be pulled here: build a tiny one from a static busybox with `docker import`."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    busybox = _busybox()
    if busybox is None:
        pytest.skip("no static busybox to build the test image (apt-get install busybox-static)")
    if (
        subprocess.run(
            ["docker", "image", "inspect", BUSYBOX_IMAGE], capture_output=True
        ).returncode
        == 0
    ):
        return BUSYBOX_IMAGE
    rootfs = tmp_path_factory.mktemp("rootfs")
    (rootfs / "bin").mkdir()
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "tmp").mkdir()
    archive = rootfs.parent / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    subprocess.run(
        ["docker", "import", str(archive), BUSYBOX_IMAGE],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return BUSYBOX_IMAGE


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--keep-going",
        action="store_true",
        help="run the slow tier (e2e, faults) even after a fast-tier test failed",
    )


def _slow(item: pytest.Item) -> bool:
    try:
        parts = item.path.resolve().relative_to(TESTS).parts
    except ValueError:
        return False
    return bool(parts) and parts[0] in SLOW_TIER


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit tests first: a broken model or reconciler shows in a minute or two instead of after
    twenty minutes of end-to-end runs. The sort is stable, so a module's tests stay together and
    module-scoped fixtures are still set up once."""
    items.sort(key=_slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    outcome = yield
    report = outcome.get_result()
    if report.failed and not _slow(item) and not item.config.getoption("--keep-going"):
        # `-x` for the fast tier only: the slow tier is not worth running on a broken build.
        item.session.shouldstop = (
            f"fast-tier test failed ({item.nodeid}); "
            "the slow tier was not run (--keep-going runs it)"
        )
