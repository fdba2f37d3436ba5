"""The test cluster behaves like a Slurm cluster, seen the way the slurm backend sees one: over
SSH from this namespace, as the login user. Each test also pins a fact of Slurm 22.05 that the
backend relies on (docs/slurm-tests.md lists them)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..harness import wait_until
from . import cluster as slurm
from .cluster import SlurmCluster, SlurmError

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(slurm.available() is not None, reason=str(slurm.available())),
]


def login(c: SlurmCluster, cmd: str) -> str:
    r = c.ssh(cmd)
    assert r.returncode == 0, f"{cmd}: rc={r.returncode}\n{r.stdout}{r.stderr}\n{c.logs()}"
    return r.stdout


def sbatch(c: SlurmCluster, args: str) -> str:
    return login(c, f"sbatch --parsable {args}").strip()


def job(c: SlurmCluster, job_id: str) -> tuple[str, str, str]:
    """(state, reason, nodes) from squeue, finished jobs included (kept MinJobAge seconds)."""
    out = login(c, f"squeue -h -t all -j {job_id} -o '%T|%r|%N'").strip()
    state, reason, nodes = out.split("|")
    return state, reason, nodes


def wait_state(c: SlurmCluster, job_id: str, states: set[str], timeout: float = 30) -> str:
    wait_until(lambda: job(c, job_id)[0] in states, timeout, 0.2, f"job {job_id} in {states}")
    return job(c, job_id)[0]


def test_sinfo_shows_both_nodes_idle(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    out = login(c, "sinfo -h -N -o '%N|%P|%t|%c|%m|%G'")
    rows = {tuple(line.split("|")) for line in out.splitlines()}
    n0, n1 = (n.name for n in c.nodes)
    assert rows == {
        (n0, "cpu*", "idle", "2", "2000", "(null)"),
        (n1, "cpu*", "idle", "2", "2000", "gpu:2"),
        (n1, "gpu", "idle", "2", "2000", "gpu:2"),
    }
    assert [p.name for p in c.partitions] == ["cpu", "gpu"]
    assert c.started_in is not None and c.started_in < 30


def test_batch_job_runs_on_a_node_and_writes_to_the_shared_home(
    slurm_cluster: SlurmCluster,
) -> None:
    c = slurm_cluster
    job_id = sbatch(c, "--wrap 'hostname; sleep 1'")
    assert wait_state(c, job_id, {"COMPLETED", "FAILED"}) == "COMPLETED"
    _, _, node = job(c, job_id)
    assert node in {n.name for n in c.nodes}
    # Written on the node, read on the login host and here: one home everywhere.
    assert (c.home / f"slurm-{job_id}.out").read_text().strip() == node
    assert login(c, f"cat slurm-{job_id}.out").strip() == node


def test_two_jobs_share_a_node(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    node = c.nodes[0].name
    ids = [sbatch(c, f"-p cpu --cpus-per-task=1 -w {node} --wrap 'sleep 60'") for _ in range(2)]
    for job_id in ids:
        wait_state(c, job_id, {"RUNNING"})
    assert {job(c, j)[2] for j in ids} == {node}
    # The node is full now: a third one-CPU job there waits, naming why.
    third = sbatch(c, f"-p cpu --cpus-per-task=1 -w {node} --wrap 'sleep 60'")
    wait_until(lambda: job(c, third)[1] == "Resources", 15, 0.2, "reason Resources")
    assert job(c, third)[0] == "PENDING"
    login(c, "scancel -u $USER")


def test_srun_spans_both_nodes(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    out = login(c, "srun -N2 hostname")
    assert sorted(out.split()) == sorted(n.name for n in c.nodes)


def test_gpu_partition_hands_out_fake_gpus(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    out = login(c, "srun -p gpu --gres=gpu:2 sh -c 'echo $SLURMD_NODENAME $CUDA_VISIBLE_DEVICES'")
    assert out.split() == [c.nodes[1].name, "0,1"]
    r = c.ssh("srun -p gpu --gres=gpu:3 true")
    assert r.returncode != 0
    assert "Requested node configuration is not available" in r.stderr


def test_scancel_ends_a_running_job_and_its_processes(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    job_id = sbatch(c, "--wrap 'sleep 617'")
    wait_state(c, job_id, {"RUNNING"})
    wait_until(lambda: _pids_running("sleep 617"), 10, 0.1, "the job's process")
    login(c, f"scancel {job_id}")
    assert wait_state(c, job_id, {"CANCELLED"}) == "CANCELLED"
    wait_until(lambda: not _pids_running("sleep 617"), 10, 0.1, "the job's process to end")
    # slurmctld records the signal once slurmd reports the step's end, which may come after
    # the state reads CANCELLED on a loaded machine.
    wait_until(
        lambda: "ExitCode=0:15" in login(c, f"scontrol show job {job_id}"),
        15, 0.2, "the job's exit code to record SIGTERM",
    )  # fmt: skip


def test_killed_node_fails_or_requeues_its_jobs(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    node = c.nodes[0].name
    pinned = f"-w {node} --cpus-per-task=1 --wrap 'sleep 300'"
    no_requeue = sbatch(c, f"--no-requeue {pinned}")
    requeue = sbatch(c, pinned)
    for job_id in (no_requeue, requeue):
        wait_state(c, job_id, {"RUNNING"})
    t0 = time.monotonic()
    c.kill_node(node)
    # A batch job that may not be requeued ends NODE_FAIL (reason NodeDown) once slurmctld
    # gives up on the node (SlurmdTimeout=6: about 17 s here); the default (JobRequeue=1) goes
    # back to PENDING, held for about two minutes (reason BeginTime).
    assert wait_state(c, no_requeue, {"NODE_FAIL"}, timeout=60) == "NODE_FAIL"
    assert time.monotonic() - t0 < 40
    assert job(c, no_requeue)[1] == "NodeDown"
    wait_until(lambda: job(c, requeue)[1] == "BeginTime", 15, 0.2, "the requeued job's hold")
    assert job(c, requeue)[0] == "PENDING"
    assert "Restarts=1" in login(c, f"scontrol show job {requeue}")
    assert c.node_states()[node] == "down*"
    # The node comes back by itself (ReturnToService=2) and takes new work.
    c.start_node(node)
    c.wait_ready()
    again = sbatch(c, f"-w {node} --wrap true")
    assert wait_state(c, again, {"COMPLETED"}) == "COMPLETED"
    login(c, "scancel -u $USER")


def test_a_port_a_job_opens_is_reachable_from_the_login_host_only(
    slurm_cluster: SlurmCluster,
) -> None:
    c = slurm_cluster
    script = c.home / "listen.sh"
    script.write_text(
        "#!/bin/sh\n"
        'exec python3 -c "import os, socket\n'
        "s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen()\n"
        "port = open(os.path.expanduser('~/port-' + os.environ['SLURM_JOB_ID']), 'w')\n"
        "port.write(str(s.getsockname()[1])); port.close()\n"
        "while True:\n"
        "    conn, _ = s.accept(); conn.sendall(os.environ['SLURMD_NODENAME'].encode())"
        '; conn.close()"\n'
    )
    os.chmod(script, 0o755)
    job_id = sbatch(c, "listen.sh")
    wait_state(c, job_id, {"RUNNING"})
    port_file = c.home / f"port-{job_id}"
    wait_until(port_file.exists, 10, 0.1, "the job's port")
    port = int(port_file.read_text())
    node = c.node(job(c, job_id)[2])
    probe = (
        "import socket, sys\n"
        f"s = socket.create_connection(({node.address!r}, {port}), 2)\n"
        "print(s.recv(100).decode())\n"
    )
    # By name from the login host (what an SSH tunnel through it does), ...
    by_name = probe.replace(repr(node.address), repr(node.name))
    assert login(c, f'python3 -c "{by_name}"').strip() == node.name
    # ... through an SSH channel to the login host from here (what the server does), ...
    tunnel = subprocess.run(
        c.ssh_argv("-W", f"{node.name}:{port}"), capture_output=True, text=True, timeout=20
    )
    assert tunnel.stdout == node.name, tunnel.stderr
    # ... never directly from here: the server has no route to a compute node.
    here = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=20)
    assert here.returncode != 0
    login(c, f"scancel {job_id}")


@pytest.mark.parametrize("fail", [False, True], ids=["after-use", "after-failed-start"])
def test_stop_leaves_no_trace(tmp_path: Path, fail: bool) -> None:
    c = SlurmCluster(tmp_path / "slurm", ready_timeout=0 if fail else 60)
    try:
        if fail:
            with pytest.raises(SlurmError, match="idle nodes") as err:
                c.start()
            assert "slurmctld" in str(err.value)  # the daemons' logs come with the error
        else:
            c.start()
            assert c.ssh("sbatch --wrap 'sleep 300'").returncode == 0
            wait_until(lambda: _pids_running("sleep 300"), 15, 0.1, "the job's process")
        pids = [p.pid for p in c._procs.values()]
        run_dir = c.run_dir
    finally:
        c.stop()
    namespaces = [c.login_ns, *(c.node_ns(n.name) for n in c.nodes)]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in namespaces if ns in listed.split()]
    assert not [ns for ns in namespaces if os.path.exists(f"/etc/netns/{ns}")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"d5{c.tag}" not in links
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
    assert not _pids_running("sleep 300")
    with pytest.raises(KeyError):
        pwd.getpwnam(c.user)
    assert not c.home.exists()
    assert run_dir is not None and not run_dir.exists()
    assert (tmp_path / "slurm" / "logs" / "slurmctld.log").exists()  # kept for post-mortems


def _pids_running(cmdline: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().replace(b"\0", b" ").strip() == cmdline.encode():
                        out.append(int(entry))
            except OSError:
                continue
    return out
