"""A directory volume on an SSH fleet: it lives on the host the first run using it landed
on; the next run goes to that host and reads what the first wrote; deleting the volume
removes the directory from the host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..harness import Server, wait_until, write_config
from . import hosts as sshhosts
from .test_fleets import apply_fleet, fleet_yaml

pytestmark = pytest.mark.skipif(sshhosts.available() is not None, reason=str(sshhosts.available()))


def task(name: str, command: str) -> str:
    return (
        f"type: task\nname: {name}\ncommands:\n  - {json.dumps(command)}\n"
        "resources:\n  cpu: 1..\n  memory: 0.1GB..\n  disk: 0.1GB..\n"
        "volumes:\n  - name: shared\n    path: /tmp/unused-shared-path\n"
    )


def test_directory_volume_follows_its_host(
    srv: Server, hosts: sshhosts.Hosts, key: Path, project_dir: Path
) -> None:
    hs = [hosts.add(), hosts.add()]
    apply_fleet(srv, project_dir, fleet_yaml("onprem", hs, key))
    write_config(project_dir, "v.dstack.yml", "type: volume\nname: shared\nfleet: onprem\n")
    r = srv.cli("apply", "-f", "v.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr

    write = "echo from-$(whoami) > $DSTACK_VOLUME_SHARED_PATH/who"
    write_config(project_dir, "w.dstack.yml", task("dir-writer", write))
    r = srv.cli("apply", "-f", "w.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    vol = json.loads(srv.cli("volume", "get", "shared", "--json").stdout)
    holder = next(h for h in hs if (h.home / ".dstack-volumes" / vol["id"] / "who").exists())
    # Three reads: each lands on the holder, whichever host is free.
    for i in range(3):
        write_config(
            project_dir,
            f"r{i}.dstack.yml",
            task(f"dir-reader-{i}", "cat $DSTACK_VOLUME_SHARED_PATH/who"),
        )
        r = srv.cli("apply", "-f", f"r{i}.dstack.yml", "-y", cwd=project_dir)
        assert r.returncode == 0 and f"from-{holder.name}" in r.stdout, r.stdout + r.stderr

    r = srv.cli("volume", "delete", "shared", "-y")
    assert r.returncode == 0, r.stdout + r.stderr
    folder = holder.home / ".dstack-volumes" / vol["id"]
    wait_until(lambda: not folder.exists(), timeout=30, what="the directory gone from the host")
