"""Queued jobs are taken by priority, then age (DESIGN.md, 'Scheduling'), end to end: behind a
run that holds a one-host SSH fleet, runs submitted in the order low, high, mid-old, mid-new
start high, mid-old, mid-new, low. An SSH-fleet host takes one job at a time (the local
backend runs process jobs side by side, so nothing would queue there)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from ..harness import Server, write_config
from . import hosts as sshhosts
from .test_fleets import apply_fleet, fleet_yaml

pytestmark = pytest.mark.skipif(sshhosts.available() is not None, reason=str(sshhosts.available()))

QUEUED = (("prio-low", 10), ("prio-high", 90), ("prio-mid-old", 50), ("prio-mid-new", 50))


def _task(name: str, priority: int, *commands: str) -> str:
    cmds = "".join(f"  - {c!r}\n" for c in commands)
    return (
        f"type: task\nname: {name}\npriority: {priority}\nfleets: [prio]\ncommands:\n{cmds}"
        "resources:\n  cpu: 1..\n  memory: 0.1GB..\n  disk: 1GB..\n"
    )


def _apply(srv: Server, project_dir: Path, name: str, text: str) -> None:
    write_config(project_dir, f"{name}.dstack.yml", text)
    r = srv.cli("apply", "-f", f"{name}.dstack.yml", "-y", "-d", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.xfail(
    reason="known bug: a queued job is placed by whichever job's pass comes first once capacity "
    "frees (job_worker claims by priority, but each queued job is re-placed on its own resync "
    "and in its own task), so the start order is arbitrary; remove this mark with the fix",
    strict=False,
)
def test_queued_jobs_start_by_priority_then_age(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
) -> None:
    apply_fleet(srv, project_dir, fleet_yaml("prio", [hosts.add()], key))
    shared = Path(tempfile.mkdtemp(prefix="prio-", dir="/tmp"))
    shared.chmod(0o777)  # the host's user appends to it
    order = shared / "order"
    try:
        _apply(srv, project_dir, "prio-hold", _task("prio-hold", 50, "sleep 300"))
        srv.wait_status("prio-hold", "running", timeout=90)
        for name, priority in QUEUED:
            _apply(srv, project_dir, name, _task(name, priority, f"echo {name} >> {order}"))
        for name, _ in QUEUED:  # all wait behind the holder
            assert srv.run(name)["status"] in ("submitted", "pending"), srv.run(name)["status"]
        assert srv.cli("stop", "prio-hold", "-y", "-x").returncode == 0
        for name, _ in QUEUED:
            assert srv.wait_status(name, "done", "failed", timeout=120)["status"] == "done"
        got = order.read_text().split()
        assert got == ["prio-high", "prio-mid-old", "prio-mid-new",
                       "prio-low"], got  # fmt: skip
    finally:
        for name in ("prio-hold", *(n for n, _ in QUEUED)):
            srv.cli("stop", name, "-y", "-x")
        shutil.rmtree(shared, ignore_errors=True)
