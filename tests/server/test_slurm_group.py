"""The fleet allocation's shell logic (slurm/group.py), run by a real `sh` in a temporary HOME
with stand-ins for `sbatch` and `squeue` (a file of live job ids), and the pieces the backend
builds from a host's request."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from dstack.server.backends.slurm import group as gr
from dstack.server.backends.slurm import scripts as sc

DIGEST = hashlib.sha256(b"token").hexdigest()
GROUP = gr.Group("fleet-1", 2)


@pytest.fixture
def login(tmp_path: Path) -> Path:
    """HOME with fake `sbatch` (prints the next id, records the call, `SBATCH_FAIL` makes it
    refuse) and `squeue -j ID` (prints ID when it is in `live`)."""
    home = tmp_path / "home"
    bin_dir = tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        'if [ -f "$HOME/../sbatch_fail" ]; then echo "sbatch: error: Batch job submission '
        'failed: Requested node configuration is not available" >&2; exit 1; fi\n'
        'echo "$@" >> "$HOME/../sbatch_calls"\n'
        'n=$(wc -l < "$HOME/../sbatch_calls"); echo $((n + 40)) >> "$HOME/../live"\n'
        "echo $((n + 40))\n"
    )
    (bin_dir / "squeue").write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$prev" in -j) id=$a;; esac; prev=$a; done\n'
        'grep -qx "$id" "$HOME/../live" 2>/dev/null && echo "$id"; true\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return home


def join(home: Path, instance: str) -> subprocess.CompletedProcess[str]:
    script = gr.join_script(
        GROUP, instance, DIGEST, gr.sbatch_command(GROUP, sc.JobRequest(instance, "cpu", 2, 2000))
    )
    env = {"HOME": str(home), "PATH": f"{home.parent / 'bin'}:/usr/bin:/bin"}
    return subprocess.run(
        ["sh", "-c", script],
        input=gr.batch_script(GROUP),
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def calls(home: Path) -> list[str]:
    f = home.parent / "sbatch_calls"
    return f.read_text().splitlines() if f.exists() else []


def test_the_first_instance_submits_the_others_join(login: Path) -> None:
    a = join(login, "inst-a")
    assert a.returncode == 0, a.stderr
    assert gr.parse_join(a.stdout) == (0, "41")
    b = join(login, "inst-b")
    assert gr.parse_join(b.stdout) == (1, "41")
    assert len(calls(login)) == 1  # one allocation for both
    assert "--nodes=2" in calls(login)[0] and "--job-name=dstackg-fleet-1" in calls(login)[0]
    again = join(login, "inst-a")  # a create repeated after a crash keeps its slot
    assert gr.parse_join(again.stdout) == (0, "41")
    full = join(login, "inst-c")
    assert full.returncode == 3 and "all slots" in full.stderr
    g = login / gr.group_dir("fleet-1")
    assert (g / "slot-1" / "token.sha256").read_text().strip() == DIGEST
    assert "srun --nodes=2" in (g / "job.sh").read_text()


def test_a_group_whose_job_ended_starts_over(login: Path) -> None:
    assert gr.parse_join(join(login, "inst-a").stdout) == (0, "41")
    (login.parent / "live").write_text("")  # Slurm no longer lists job 41
    assert gr.parse_join(join(login, "inst-b").stdout) == (0, "42")
    assert len(calls(login)) == 2


def test_a_refused_sbatch_frees_the_slot_and_the_lock(login: Path) -> None:
    (login.parent / "sbatch_fail").write_text("")
    r = join(login, "inst-a")
    assert r.returncode == 1 and "Requested node configuration" in r.stderr
    g = login / gr.group_dir("fleet-1")
    assert not (g / "submit").exists() and not (g / "slot-0").exists()
    (login.parent / "sbatch_fail").unlink()
    assert gr.parse_join(join(login, "inst-a").stdout) == (0, "41")


def test_leave_frees_only_a_slot_the_instance_holds(login: Path) -> None:
    join(login, "inst-a")
    env = {"HOME": str(login), "PATH": "/usr/bin:/bin"}
    slot = login / gr.slot_dir("fleet-1", 0)
    subprocess.run(["sh", "-c", gr.leave_command("fleet-1", 0, "inst-z")], env=env, check=True)
    assert slot.exists()
    subprocess.run(["sh", "-c", gr.leave_command("fleet-1", 0, "inst-a")], env=env, check=True)
    assert not slot.exists()


def test_which_hosts_form_a_group() -> None:
    cluster = {"placement": "cluster", "fleet_id": "f1", "fleet_nodes": 3}
    assert gr.group_of(cluster) == gr.Group("f1", 3)
    assert gr.group_of({**cluster, "fleet_nodes": 1}) is None
    assert gr.group_of({**cluster, "placement": "any"}) is None
    assert gr.group_of({"placement": "cluster"}) is None  # a fleet of a range of nodes
    with pytest.raises(ValueError):
        gr.group_of({**cluster, "fleet_id": "f1; rm -rf /"})
