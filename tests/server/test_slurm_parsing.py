"""The Slurm backend's readers of `sinfo`, `squeue` and `sbatch` output (recorded from Slurm
22.05 formats), the batch script and `sbatch` flags, and what each job state means."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dstack.models.offers import InstanceAvailability as A
from dstack.server.backends.slurm import parsing as sp
from dstack.server.backends.slurm import scripts as sc

# `sinfo -h -N -o '%N|%P|%c|%m|%G|%T'` on a 22.05 cluster: the default partition has a `*`,
# a node in two partitions is printed twice.
SINFO = """\
cpu-01|cpu*|8|31000|(null)|idle
cpu-02|cpu*|8|31000|(null)|allocated
cpu-03|cpu*|8|31000|(null)|down*
cpu-04|cpu*|16|64000|(null)|drained
gpu-01|gpu|64|515000|gpu:a100:4(S:0-1)|mixed
gpu-02|gpu|64|515000|gpu:a100:4(S:0-1)|allocated
gpu-03|gpu-old|32|256000|gpu:2|idle
gpu-03|debug|32|256000|gpu:2|idle
gpu-04|gpu-old|32|256000|gpu:tesla:2(S:0,1),mps:100|draining
"""


def test_gres_forms() -> None:
    assert sp.parse_gres("(null)") == (None, 0)
    assert sp.parse_gres("gpu:2") == (None, 2)
    assert sp.parse_gres("gpu:a100:4(S:0-1)") == ("a100", 4)
    assert sp.parse_gres("gpu:tesla:2(S:0,1),mps:100") == ("tesla", 2)
    assert sp.parse_gres("gpu:a100:2,gpu:a100:2") == ("a100", 4)
    assert sp.parse_gres("shard:8") == (None, 0)
    with pytest.raises(sp.SlurmOutputError):
        sp.parse_gres("gpu:a100:many")


def test_sinfo_nodes() -> None:
    nodes = sp.parse_sinfo(SINFO)
    assert len(nodes) == 9
    first = nodes[0]
    assert (first.name, first.partition, first.cpus, first.memory_mib) == (
        "cpu-01",
        "cpu",
        8,
        31000,
    )
    assert nodes[4].gpu_name == "a100" and nodes[4].gpu_count == 4
    assert nodes[6].gpu_name is None and nodes[6].gpu_count == 2
    with pytest.raises(sp.SlurmOutputError, match="unexpected sinfo line"):
        sp.parse_sinfo("cpu-01 cpu 8 31000 (null) idle\n")


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("idle", A.AVAILABLE),
        ("mixed", A.AVAILABLE),
        ("idle~", A.AVAILABLE),  # powered down: Slurm powers it up
        ("allocated", A.BUSY),
        ("completing", A.BUSY),
        ("down*", A.NOT_AVAILABLE),
        ("idle*", A.NOT_AVAILABLE),  # not responding
        ("drained", A.NOT_AVAILABLE),
        ("draining", A.NOT_AVAILABLE),
        ("maint", A.NOT_AVAILABLE),
    ],
)
def test_node_states(state: str, expected: A) -> None:
    assert sp.node_availability(state) is expected


def test_offers_one_per_partition_and_shape() -> None:
    nodes = sp.parse_sinfo(SINFO)
    offers = sp.offers_from_nodes("hpc", nodes, [], {"gpu-old": "V100"})
    by_name = {o.instance.name: o for o in offers}
    assert sorted(by_name) == sorted(
        [
            "cpu/16cpu-64000MB",
            "cpu/8cpu-31000MB",
            "debug/32cpu-256000MB-2xgpu",  # no GPU name anywhere: the offer says so
            "gpu-old/32cpu-256000MB-2xtesla",
            "gpu-old/32cpu-256000MB-2xV100",
            "gpu/64cpu-515000MB-4xA100",
        ]
    )
    cpu8 = by_name["cpu/8cpu-31000MB"]
    assert cpu8.region == "hpc" and cpu8.availability_zones == ["cpu"] and cpu8.price == 0
    assert cpu8.availability is A.AVAILABLE  # the best of idle, allocated, down
    assert by_name["cpu/16cpu-64000MB"].availability is A.NOT_AVAILABLE
    a100 = by_name["gpu/64cpu-515000MB-4xA100"]
    assert a100.availability is A.AVAILABLE and len(a100.instance.resources.gpus) == 4
    assert a100.instance.resources.gpus[0].name == "A100"
    assert a100.instance.resources.gpus[0].memory_mib == 40 * 1024  # smallest known A100
    # The configuration names the GPU of a partition whose GRES has no type.
    v100 = by_name["gpu-old/32cpu-256000MB-2xV100"]
    assert v100.instance.resources.gpus[0].name == "V100"
    assert by_name["gpu-old/32cpu-256000MB-2xtesla"].availability is A.NOT_AVAILABLE


def test_offers_only_from_listed_partitions() -> None:
    nodes = sp.parse_sinfo(SINFO)
    offers = sp.offers_from_nodes("hpc", nodes, ["gpu", "debug"], {})
    assert {o.availability_zones[0] for o in offers} == {"gpu", "debug"}


def test_sbatch_and_squeue_output() -> None:
    assert sp.parse_sbatch("4242\n") == "4242"
    assert sp.parse_sbatch("4242;hpc\n") == "4242"
    with pytest.raises(sp.SlurmOutputError):
        sp.parse_sbatch("sbatch: error: Batch job submission failed\n")
    assert sp.parse_squeue_job("") is None
    assert sp.parse_squeue_job("PENDING|Priority|\n") == sp.JobState("PENDING", "Priority", "")
    assert sp.parse_squeue_job("RUNNING|None|gpu-01\n").node == "gpu-01"
    assert sp.parse_squeue_user("17|dstack-abc\n18|my-own-job\n") == [
        ("17", "dstack-abc"),
        ("18", "my-own-job"),
    ]
    assert sp.instance_of_job("dstack-abc") == "abc"
    assert sp.instance_of_job("train") is None and sp.instance_of_job("dstack-") is None


@pytest.mark.parametrize(
    ("line", "phase", "words"),
    [
        ("PENDING|Resources|", sp.Phase.PENDING, "pending in Slurm (Resources)"),
        ("PENDING|Priority|", sp.Phase.PENDING, "pending in Slurm (Priority)"),
        ("PENDING|QOSMaxJobsPerUserLimit|", sp.Phase.PENDING, "(QOSMaxJobsPerUserLimit)"),
        ("CONFIGURING|None|gpu-01", sp.Phase.PENDING, "pending in Slurm (no reason given)"),
        ("RUNNING|None|gpu-01", sp.Phase.RUNNING, None),
        ("COMPLETING|None|gpu-01", sp.Phase.RUNNING, None),
        ("COMPLETED|None|gpu-01", sp.Phase.GONE, "COMPLETED on node gpu-01: it ended"),
        ("FAILED|NonZeroExitCode|gpu-01", sp.Phase.GONE, "it failed"),
        ("CANCELLED|None|gpu-01", sp.Phase.GONE, "cancelled outside dstack (scancel)"),
        ("TIMEOUT|TimeLimit|gpu-01", sp.Phase.GONE, "reached its time limit (max_duration)"),
        ("NODE_FAIL|NodeDown|gpu-01", sp.Phase.GONE, "the node failed, reason NodeDown"),
        ("PREEMPTED|None|gpu-01", sp.Phase.GONE, "Slurm preempted it"),
    ],
)
def test_job_states(line: str, phase: sp.Phase, words: str | None) -> None:
    job = sp.parse_squeue_job(line)
    assert sp.phase_of(job) is phase
    assert job is not None
    if phase is sp.Phase.PENDING:
        assert words in sp.pending_message(job)
    elif phase is sp.Phase.GONE:
        message = sp.gone_message("hpc", "77", job)
        assert message.startswith("Slurm job 77 on cluster hpc is ") and words in message


def test_a_job_slurm_forgot() -> None:
    assert sp.phase_of(None) is sp.Phase.GONE
    assert "no longer known to Slurm" in sp.gone_message("hpc", "77", None)


def test_sbatch_flags_from_the_offer_and_request() -> None:
    req = sc.JobRequest("i-1", "gpu", cpus=64, memory_mib=515000, gpus=4, max_duration_s=3600)
    cmd = sc.sbatch_command(req)
    assert cmd.startswith("sbatch --parsable --job-name=dstack-i-1 --partition=gpu --nodes=1 ")
    for flag in ("--cpus-per-task=64", "--mem=515000M", "--gres=gpu:4", "--time=65"):
        assert f" {flag} " in cmd
    assert '--output="$HOME"/.dstack-slurm/instances/i-1/slurm.out' in cmd
    assert cmd.endswith('"$HOME"/.dstack-slurm/instances/i-1/job.sh')
    plain = sc.sbatch_command(sc.JobRequest("i-2", "cpu", cpus=2, memory_mib=1024))
    assert "--gres" not in plain and "--time" not in plain


def test_names_reaching_a_shell_are_checked() -> None:
    with pytest.raises(ValueError):
        sc.sbatch_command(sc.JobRequest("i-1", "gpu; rm -rf ~", cpus=1, memory_mib=1))
    with pytest.raises(ValueError):
        sc.job_name("$(reboot)")
    with pytest.raises(ValueError):
        sc.job_state_command("1; true")


def test_batch_script_runs_the_agent_in_the_foreground() -> None:
    text = sc.batch_script("i-1")
    assert text.startswith("#!/bin/sh\n")
    assert 'D="$HOME/.dstack-slurm/instances/i-1"' in text
    assert 'rm -f "$D/state/agent.json"' in text  # a requeued job never shows a stale port
    last = text.strip().splitlines()[-1]
    assert last.startswith('exec python3 "$HOME/.dstack-slurm/agent.pyz" --home "$D/state"')
    assert "--listen 0.0.0.0 --port 0" in last and '--token-sha256-file "$D/token.sha256"' in last
    prep = sc.prepare_script("i-1", "a" * 64)
    assert "umask 077" in prep and "chmod 600" in prep and "chmod 700" in prep
    with pytest.raises(ValueError):
        sc.prepare_script("i-1", "not-a-hash")


def test_how_an_ended_slurm_job_ends_the_dstack_job() -> None:
    from dstack.server.backends.slurm.parsing import JobState, job_reason

    def state(s: str) -> JobState:
        return JobState(state=s, reason="None", node="n1")

    assert job_reason(state("TIMEOUT")) == "max_duration_exceeded"
    assert job_reason(state("CANCELLED by 1000")) == "executor_error"
    assert job_reason(state("NODE_FAIL")) is None  # an interruption
    assert job_reason(state("PREEMPTED")) is None
    assert job_reason(None) is None


@pytest.mark.parametrize("how", ["exits", "sigterm"])
def test_on_a_docker_cluster_the_batch_script_removes_its_jobs_containers(
    tmp_path: Path, how: str
) -> None:
    """A real `sh` runs the script with stand-ins for `python3` (the agent) and `docker`:
    when the agent ends, on its own or on the SIGTERM `scancel` sends, each of its jobs'
    containers is removed and the agent's exit code is the script's."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    jobs = home / ".dstack-slurm/instances/i-1/state/jobs"
    (jobs / "job-a").mkdir(parents=True)
    (jobs / "job-b").mkdir()
    bin_dir.mkdir()
    wait = "sleep 30 & wait" if how == "sigterm" else "true"
    agent = f"#!/bin/sh\ntrap 'exit 3' TERM\necho $$ > {tmp_path}/agent.pid\n{wait}\nexit 3\n"
    (bin_dir / "python3").write_text(agent)
    (bin_dir / "docker").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/docker.log\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    text = sc.batch_script("i-1", docker=True)
    assert "exec python3" not in text
    proc = subprocess.Popen(["sh", "-c", text], env=env)
    if how == "sigterm":
        deadline = time.monotonic() + 10
        while not (tmp_path / "agent.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == 3
    removed = sorted((tmp_path / "docker.log").read_text().splitlines())
    assert removed == ["rm -f dstack-job-a", "rm -f dstack-job-b"]
    assert sc.batch_script("i-1").strip().splitlines()[-1].startswith("exec python3")
