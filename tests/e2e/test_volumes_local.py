"""A directory volume on the server's own machine: a task writes a checkpoint, a second run
reads it, and deleting the volume removes the directory."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

from .harness import Server, wait_until, write_config

VOLUME = "type: volume\nname: {name}\nfleet: local\n"


def task(name: str, volume: str, command: str) -> str:
    return (
        f"type: task\nname: {name}\ncommands:\n  - {json.dumps(command)}\n"
        "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"
        f"volumes:\n  - {volume}:/tmp/unused-{volume}\n"
    )


def test_a_checkpoint_in_a_directory_volume_is_read_by_the_next_run(
    server: Server, project_dir: Path
) -> None:
    srv = server
    write_config(project_dir, "v.dstack.yml", VOLUME.format(name="ckpt-local"))
    r = srv.cli("apply", "-f", "v.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    listing = srv.cli("volume").stdout
    assert "ckpt-local" in listing and "active" in listing, listing

    write = "echo step-7 > $DSTACK_VOLUME_CKPT_LOCAL_PATH/step"
    write_config(project_dir, "w.dstack.yml", task("vol-writer", "ckpt-local", write))
    r = srv.cli("apply", "-f", "w.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    read = "cat $DSTACK_VOLUME_CKPT_LOCAL_PATH/step; echo at=$DSTACK_VOLUME_CKPT_LOCAL_PATH"
    write_config(project_dir, "r.dstack.yml", task("vol-reader", "ckpt-local", read))
    r = srv.cli("apply", "-f", "r.dstack.yml", "-y", cwd=project_dir)
    assert r.returncode == 0 and "step-7" in r.stdout, r.stdout + r.stderr

    vol = json.loads(srv.cli("volume", "get", "ckpt-local", "--json").stdout)
    at = [line[3:].strip() for line in r.stdout.splitlines() if line.startswith("at=")]
    folder = Path(at[0])
    if os.geteuid() == 0:  # the job ran as dstack-job, which cannot enter root's home
        assert folder == Path("/var/lib/dstack-volumes") / vol["id"]
        assert pwd.getpwuid(folder.stat().st_uid).pw_name == "dstack-job"
    else:
        assert folder == srv.home / ".dstack-volumes" / vol["id"]
    assert (folder / "step").read_text().strip() == "step-7"
    r = srv.cli("volume", "delete", "ckpt-local", "-y")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: not folder.exists(), timeout=30, what="the volume's directory to go")
