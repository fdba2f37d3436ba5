"""The `slurm` backend end to end against a real Slurm 22.05 cluster (tests/e2e/slurm/cluster.py):
a real server configured through config.yml, the real CLI. Each dstack job is a Slurm batch
job whose script runs the agent on a compute node; the server reaches it through the login
node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..harness import Server, wait_until, write_config
from .cluster import SlurmCluster, available

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(available() is not None, reason=str(available()))]

FLEET = "type: fleet\nname: hpc\nnodes: 0..4\nbackends: [slurm]\nidle_duration: 1s\n"


def task(name: str, command: str, extra: str = "") -> str:
    return (
        f"type: task\nname: {name}\ncommands:\n  - {json.dumps(command)}\n"
        "resources:\n  cpu: 1..\n  memory: 0.1GB..\n  disk: 0.1GB..\n" + extra
    )


@pytest.fixture
def slurm_server(tmp_path: Path, slurm_cluster: SlurmCluster) -> Any:
    srv = Server(
        home=tmp_path / "home",
        extra_env={
            "DSTACK_SERVER_LOCAL_BACKEND": "0",
            "DSTACK_SERVER_INSTANCE_CHECK_SECONDS": "1",
            "DSTACK_SERVER_UNREACHABLE_GRACE": "60",
        },
    )
    srv.home.mkdir()
    srv.server_dir.mkdir(parents=True)
    c = slurm_cluster
    config = {"projects": [{"name": "main", "backends": [c.backend_config()]}]}
    (srv.server_dir / "config.yml").write_text(yaml.safe_dump(config))
    srv.start()
    proj = tmp_path / "proj"
    proj.mkdir()
    write_config(proj, "fleet.dstack.yml", FLEET)
    r = srv.cli("apply", "-f", "fleet.dstack.yml", "-y", cwd=proj)
    assert r.returncode == 0, r.stdout + r.stderr + srv.log_tail()
    try:
        yield srv, proj, c
    finally:
        srv.cleanup()


def squeue(c: SlurmCluster) -> list[str]:
    r = c.ssh("squeue -h -o '%j|%T|%N'")
    return [line for line in r.stdout.splitlines() if line.strip()]


def test_offers_a_task_and_a_task_too_big(slurm_server: Any) -> None:
    srv, proj, c = slurm_server
    r = srv.cli("offer", "--backend", "slurm", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    offers = json.loads(r.stdout)["offers"]
    assert offers and {o["region"] for o in offers} == {"hpc"}, offers
    zones = {z for o in offers for z in o.get("availability_zones") or []}
    assert zones == {"cpu", "gpu"}, offers
    names = {o["instance"]["name"] for o in offers}
    # One offer per (partition, node shape): the GPU node is in both partitions.
    assert names == {"cpu/2cpu-2000MB", "cpu/2cpu-2000MB-2xgpu", "gpu/2cpu-2000MB-2xgpu"}, names
    table = srv.cli("offer", "--backend", "slurm").stdout
    assert "slurm (hpc)" in table and "gpu/2cpu-2000MB-2xgpu" in table, table

    write_config(proj, "t.dstack.yml", task("hello", "echo hello-from-$(hostname)"))
    r = srv.cli("apply", "-f", "t.dstack.yml", "-y", cwd=proj, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + srv.log_tail()
    nodes = {n.name for n in c.nodes}
    assert any(f"hello-from-{n}" in r.stdout for n in nodes), r.stdout
    wait_until(lambda: not squeue(c), timeout=30, what="the Slurm job to end")

    big = task("huge", "true").replace("cpu: 1..", "cpu: 64..")
    write_config(proj, "b.dstack.yml", big)
    r = srv.cli("apply", "-f", "b.dstack.yml", "-y", cwd=proj, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "No matching instance offers" in out, out  # the plan says so before submitting
    # The refusal names each partition's node shape and what it lacks.
    assert "slurm offer cpu/2cpu-2000MB: cpu 64.. (has 2)" in out, out
    assert "gpu/2cpu-2000MB-2xgpu: cpu 64.. (has 2)" in out, out
    assert not squeue(c)  # nothing reached Slurm


def test_two_jobs_share_a_node_and_stop_scancels(slurm_server: Any) -> None:
    """One node drained: Slurm must place both one-CPU jobs on the other, at once; each
    has its own agent, directory and port there."""
    srv, proj, c = slurm_server
    drained, shared = c.nodes[0].name, c.nodes[1].name
    r = c.run_login(f"scontrol update NodeName={drained} State=DRAIN Reason=test", root=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("share-a", "share-b"):
        write_config(proj, f"{name}.dstack.yml", task(name, f"echo I-am-{name} $PWD; sleep 300"))
        r = srv.cli("apply", "-f", f"{name}.dstack.yml", "-y", "-d", cwd=proj)
        assert r.returncode == 0, r.stdout + r.stderr
    for name in ("share-a", "share-b"):
        srv.wait_status(name, "running", timeout=90)
    jobs = squeue(c)
    assert len(jobs) == 2 and all(j.endswith(f"|RUNNING|{shared}") for j in jobs), jobs
    dirs = {}
    for name in ("share-a", "share-b"):
        line = wait_until(
            lambda n=name: next(
                (x for x in srv.cli("logs", n).stdout.splitlines() if f"I-am-{n}" in x), None
            ),
            timeout=30,
            what=f"{name}'s output",
        )
        dirs[name] = line.split()[-1]
    assert dirs["share-a"] != dirs["share-b"], dirs
    states = c.run_login(
        "for f in .dstack-slurm/instances/*/state/agent.json; do cat $f; echo; done"
    )
    ports = {json.loads(x)["port"] for x in states.stdout.splitlines() if x.strip()}
    assert len(ports) == 2, states.stdout
    r = srv.cli("stop", "share-a", "-y")
    assert r.returncode == 0, r.stdout + r.stderr
    srv.wait_status("share-a", "terminated", "done", "failed", "aborted", timeout=60)
    wait_until(lambda: len(squeue(c)) == 1, timeout=60, what="one Slurm job cancelled")
    assert srv.run("share-b")["status"] == "running"
    r = srv.cli("stop", "share-b", "-x", "-y")
    assert r.returncode == 0
    wait_until(lambda: not squeue(c), timeout=60, what="every Slurm job cancelled")


@pytest.mark.timeout(300)  # Slurm takes ~17 s to call a silent node down
def test_a_node_that_dies_interrupts_the_job_and_retry_resubmits(slurm_server: Any) -> None:
    srv, proj, c = slurm_server
    extra = "retry:\n  on_events: [interruption]\n  duration: 10m\n"
    write_config(proj, "n.dstack.yml", task("nodefail", "sleep 600", extra))
    r = srv.cli("apply", "-f", "n.dstack.yml", "-y", "-d", cwd=proj)
    assert r.returncode == 0, r.stdout + r.stderr
    srv.wait_status("nodefail", "running", timeout=90)
    (job,) = squeue(c)
    node = job.split("|")[2]
    c.kill_node(node)

    def resubmitted() -> Any:
        run = srv.run("nodefail")
        subs = [s for j in run["jobs"] for s in j["job_submissions"]]
        return len(subs) >= 2 and subs

    subs = wait_until(resubmitted, timeout=150, what="a resubmitted job")
    assert subs[0]["termination_reason"] == "interrupted_by_no_capacity", subs[0]
    assert "NODE_FAIL" in (subs[0]["termination_reason_message"] or ""), subs[0]
    srv.wait_status("nodefail", "running", timeout=120)
    (job,) = squeue(c)
    assert job.split("|")[2] != node  # the dead node is down: Slurm chose the other
    srv.cli("stop", "nodefail", "-x", "-y")


def test_a_scancel_from_outside_fails_the_job_naming_slurm(slurm_server: Any) -> None:
    srv, proj, c = slurm_server
    extra = "retry:\n  on_events: [interruption]\n  duration: 10m\n"
    write_config(proj, "x.dstack.yml", task("cancelled", "sleep 600", extra))
    r = srv.cli("apply", "-f", "x.dstack.yml", "-y", "-d", cwd=proj)
    assert r.returncode == 0, r.stdout + r.stderr
    srv.wait_status("cancelled", "running", timeout=90)
    assert c.ssh("scancel --name=$(squeue -h -o %j | head -n1)").returncode == 0
    run = srv.wait_status("cancelled", "failed", timeout=60)
    (sub,) = [s for j in run["jobs"] for s in j["job_submissions"]]  # not resubmitted
    assert sub["termination_reason"] == "executor_error", sub
    assert "scancel" in (sub["termination_reason_message"] or ""), sub


def test_a_job_waiting_in_slurm_says_why(slurm_server: Any) -> None:
    """Both nodes busy (each job takes a node's two CPUs): the third waits in Slurm's queue, and
    `dstack ps` shows Slurm's reason with `provisioning`."""
    srv, proj, c = slurm_server
    names = ("busy-a", "busy-b", "queued")
    for name in names:
        text = task(name, "sleep 300").replace("cpu: 1..", "cpu: 2..")
        write_config(proj, f"{name}.dstack.yml", text)
        r = srv.cli("apply", "-f", f"{name}.dstack.yml", "-y", "-d", cwd=proj)
        assert r.returncode == 0, r.stdout + r.stderr

    def waiting() -> Any:
        sub = srv.run("queued")["jobs"][0]["job_submissions"][-1]
        message = sub.get("status_message") or ""
        # Slurm says `Resources`, or `Priority` for a job queued behind another waiting one;
        # a job its scheduler has not looked at yet has no reason (shown as such) until then,
        # and the message must follow Slurm's as it changes.
        reason = "(Resources)" in message or "(Priority)" in message
        return "pending in Slurm" in message and reason and sub

    sub = wait_until(waiting, timeout=90, what="the queued job to show Slurm's reason")
    assert sub["status"] == "provisioning", sub
    assert "pending in Slurm" in srv.cli("ps", "-v").stdout
    for name in names:
        srv.cli("stop", name, "-x", "-y")


TRAPS_TERM = "trap 'echo got-term; exit 0' TERM; echo started; while true; do sleep 0.2; done"


def slurm_states(c: SlurmCluster) -> list[str]:
    """Every job Slurm still remembers (ended ones for MinJobAge), as `name|STATE`."""
    r = c.ssh("squeue -h -t all -o '%j|%T'")
    return sorted(line for line in r.stdout.splitlines() if line.strip())


def started(srv: Any, name: str) -> None:
    wait_until(lambda: "started" in srv.cli("logs", name).stdout, timeout=30, what="started")


def test_stop_is_graceful_and_stop_abort_kills_at_once(slurm_server: Any) -> None:
    """`stop`: the job gets SIGTERM (its trap runs); then the idle allocation is ended with
    SIGTERM too, so Slurm records it COMPLETED, not CANCELLED. `stop -x`: killed, no trap."""
    srv, proj, c = slurm_server
    write_config(proj, "g.dstack.yml", task("graceful", TRAPS_TERM))
    assert srv.cli("apply", "-f", "g.dstack.yml", "-y", "-d", cwd=proj).returncode == 0
    srv.wait_status("graceful", "running", timeout=90)
    started(srv, "graceful")
    assert srv.cli("stop", "graceful", "-y").returncode == 0
    srv.wait_status("graceful", "terminated", timeout=60)
    assert "got-term" in srv.cli("logs", "graceful").stdout
    wait_until(lambda: not squeue(c), timeout=60, what="the allocation to end")
    (state,) = slurm_states(c)
    assert state.endswith("|COMPLETED"), state  # ended on SIGTERM, not scancel's kill

    write_config(proj, "k.dstack.yml", task("killed", TRAPS_TERM, "stop_duration: 5m\n"))
    assert srv.cli("apply", "-f", "k.dstack.yml", "-y", "-d", cwd=proj).returncode == 0
    srv.wait_status("killed", "running", timeout=90)
    started(srv, "killed")
    assert srv.cli("stop", "killed", "-x", "-y").returncode == 0
    run = srv.wait_status("killed", "terminated", timeout=30)  # not after stop_duration
    assert run["jobs"][0]["job_submissions"][-1]["termination_reason"] == "aborted_by_user"
    assert "got-term" not in srv.cli("logs", "killed").stdout
    wait_until(lambda: not squeue(c), timeout=60, what="the allocation to end")


def test_logs_are_complete_after_the_job(slurm_server: Any) -> None:
    """5000 lines written as fast as the shell can: all of them, in order, once the job is
    done and its Slurm job and directory are gone."""
    srv, proj, c = slurm_server
    write_config(proj, "l.dstack.yml", task("chatty", "seq 1 5000 | sed 's/^/line-/'"))
    r = srv.cli("apply", "-f", "l.dstack.yml", "-y", cwd=proj, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + srv.log_tail()
    srv.wait_status("chatty", "done", timeout=30)
    wait_until(lambda: not squeue(c), timeout=60, what="the allocation to end")
    # The instance directory (the agent's copy of the log included) goes after the job.
    wait_until(
        lambda: c.run_login("ls .dstack-slurm/instances | wc -l").stdout.strip() == "0",
        timeout=30,
        what="the instance directory to be removed",
    )
    lines = [x for x in srv.cli("logs", "chatty").stdout.splitlines() if x.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 5001)], (len(lines), lines[:3], lines[-3:])


CLUSTER_FLEET = (
    "type: fleet\nname: pair\nnodes: 2\nplacement: cluster\nbackends: [slurm]\n"
    "resources:\n  cpu: 2..\n  memory: 1GB..\n  disk: 0.1GB..\n"
)
RANK = (
    "echo rank=$DSTACK_NODE_RANK nodes=$DSTACK_NODES_NUM master=$DSTACK_MASTER_NODE_IP "
    "host=$(hostname) ips=$(echo $DSTACK_NODES_IPS | tr ' ' ,) "
    "hostfile=$(tr '\\n' , < $DSTACK_MPI_HOSTFILE) "
    "> $HOME/rank-$DSTACK_NODE_RANK"
)


@pytest.mark.timeout(300)
def test_a_two_node_task_runs_in_one_allocation(slurm_server: Any) -> None:
    """A `placement: cluster` fleet of 2 is one `sbatch --nodes=2` (one agent per node via
    srun); a `nodes: 2` task runs one rank on each node, with one master and the node
    addresses from the allocation."""
    srv, proj, c = slurm_server
    write_config(proj, "pair.dstack.yml", CLUSTER_FLEET)
    r = srv.cli("apply", "-f", "pair.dstack.yml", "-y", cwd=proj, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + srv.log_tail()
    jobs = wait_until(lambda: squeue(c), timeout=30, what="the fleet's allocation")
    (job,) = jobs  # one Slurm job for both instances
    assert job.startswith("dstackg-"), job
    wait_until(
        lambda: sum(i["status"] == "idle" for i in fleet_instances(srv, "pair")) == 2,
        timeout=90,
        what="both instances of the fleet idle",
    )
    text = task("ranks", RANK, "nodes: 2\nfleets: [pair]\n").replace("cpu: 1..", "cpu: 2..")
    write_config(proj, "r.dstack.yml", text)
    r = srv.cli("apply", "-f", "r.dstack.yml", "-y", cwd=proj, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + srv.log_tail()
    lines = [c.run_login(f"cat rank-{k}").stdout.strip() for k in (0, 1)]
    fields = [dict(f.split("=", 1) for f in line.split()) for line in lines]
    addresses = [n.address for n in c.nodes]
    assert {f["host"] for f in fields} == {n.name for n in c.nodes}, lines
    assert [f["rank"] for f in fields] == ["0", "1"], lines
    assert all(f["nodes"] == "2" for f in fields), lines
    ips = fields[0]["ips"].split(",")
    assert sorted(ips) == sorted(addresses) and fields[1]["ips"] == fields[0]["ips"], lines
    assert fields[0]["master"] == fields[1]["master"] == ips[0], lines
    # CPU nodes: one `<ip>` line each, by rank.
    assert fields[0]["hostfile"] == fields[1]["hostfile"] == ",".join(ips) + ",", lines
    master_host = next(n.name for n in c.nodes if n.address == ips[0])
    assert fields[0]["host"] == master_host, lines  # rank 0 runs on the master's node
    (job,) = squeue(c)  # still the one allocation
    assert job.startswith("dstackg-"), job


def fleet_instances(srv: Any, name: str) -> list[dict[str, Any]]:
    r = srv.api("/api/project/main/fleets/get", {"name": name})
    return r.json().get("instances") or [] if r.status_code == 200 else []
