"""The shell text the backend runs on a cluster's login node, and the batch script Slurm runs.

Everything lives in `~/.dstack-slurm/` of the login user, which the compute nodes share (home
directories are shared on Slurm clusters): the agent zipapp once, and one directory per
instance with the token's SHA-256, the batch script, Slurm's output and the agent's state.
Names that reach a shell are validated (instance ids, partitions, users) or quoted.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass

from dstack.server.backends.slurm.parsing import JOB_PREFIX, SQUEUE_JOB_FORMAT, SQUEUE_USER_FORMAT

BASE_DIR = ".dstack-slurm"
AGENT_FILE = "agent.pyz"
# Slurm's own limit ends the job a while after dstack's `max_duration`: dstack stops the run
# first (with its own reason) and Slurm's limit only catches an agent that did not.
TIME_LIMIT_SLACK_S = 300
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_JOB_ID_RE = re.compile(r"^\d+$")


def safe_id(value: str, what: str = "instance id") -> str:
    if not _ID_RE.match(value):
        raise ValueError(f"{what} {value!r} cannot be used in a Slurm job name")
    return value


def job_name(instance_id: str) -> str:
    return JOB_PREFIX + safe_id(instance_id)


def instance_dir(instance_id: str) -> str:
    """The instance's directory, relative to the login user's home."""
    return f"{BASE_DIR}/instances/{safe_id(instance_id)}"


def _home(rel: str) -> str:
    return f'"$HOME"/{rel}'


@dataclass(frozen=True)
class JobRequest:
    """What the batch job asks Slurm for: one node of the offer's shape."""

    instance_id: str
    partition: str
    cpus: int
    memory_mib: int
    gpus: int = 0
    max_duration_s: int | None = None


def time_limit_minutes(max_duration_s: int | None) -> int | None:
    if not max_duration_s or max_duration_s <= 0:
        return None
    return math.ceil((max_duration_s + TIME_LIMIT_SLACK_S) / 60)


def sbatch_command(req: JobRequest) -> str:
    """`sbatch --parsable ...` for the instance's batch script (run on the login node)."""
    d = _home(instance_dir(req.instance_id))
    args = [
        "sbatch",
        "--parsable",
        f"--job-name={job_name(req.instance_id)}",
        f"--partition={shlex.quote(safe_id(req.partition, 'partition'))}",
        "--nodes=1",
        "--ntasks=1",
        # A node that dies ends the job NODE_FAIL (the dstack job is interrupted and its
        # `retry` decides), instead of Slurm requeueing it behind dstack's back.
        "--no-requeue",
        f"--cpus-per-task={int(req.cpus)}",
        f"--mem={int(req.memory_mib)}M",
    ]
    if req.gpus:
        args.append(f"--gres=gpu:{int(req.gpus)}")
    minutes = time_limit_minutes(req.max_duration_s)
    if minutes:
        args.append(f"--time={minutes}")
    args += [f"--chdir={d}", f"--output={d}/slurm.out", f"{d}/job.sh"]
    return " ".join(args)


def agent_command(docker: bool = False) -> str:
    """The agent of the instance directory `$D`, in the foreground. On a `docker: true`
    cluster the shell stays (the agent is its child, so `scancel` still reaches it): a job's
    container is the Docker engine's child, not the Slurm job's, so when the agent ends
    (SIGTERM passed on, or it exits) the containers of its jobs are removed; else `exec`."""
    agent = (
        f'python3 "$HOME/{BASE_DIR}/{AGENT_FILE}" --home "$D/state" --listen 0.0.0.0 '
        '--port 0 --token-sha256-file "$D/token.sha256"'
    )
    if not docker:
        return f"exec {agent}"
    return (
        f"{agent} & A=$!; trap 'kill -TERM $A 2>/dev/null' TERM INT; wait $A; RC=$?; "
        "while kill -0 $A 2>/dev/null; do wait $A; RC=$?; done; "
        # A wait the trap cut short says 128+signal: the agent's own status is kept until
        # waited for (127 when there is none left).
        "if [ $RC -gt 128 ]; then wait $A; R=$?; [ $R -ne 127 ] && RC=$R; fi; "
        'for J in "$D"/state/jobs/*; do [ -d "$J" ] && '
        'docker rm -f "dstack-${J##*/}" >/dev/null 2>&1; done; exit $RC'
    )


def batch_script(instance_id: str, docker: bool = False) -> str:
    """Runs the agent in the foreground for the job's lifetime: `scancel` ends it with the
    job (`proctrack/linuxproc` only tracks the script's children, so nothing daemonizes).
    The agent listens on every address of the node: the server reaches it through the login
    node; every request but the health check needs the token, whose hash is all the node has.
    A requeued job (preemption) starts from a clean state file, so the server never reads the
    port of the previous run."""
    d = f"$HOME/{instance_dir(instance_id)}"
    return (
        "#!/bin/sh\n"
        f"# dstack instance {instance_id}: the dstack agent, for as long as this job runs\n"
        f'D="{d}"\n'
        'mkdir -p "$D/state" && rm -f "$D/state/agent.json"\n'
        'echo "node=$(hostname) job=$SLURM_JOB_ID started=$(date +%s)"\n'
        f"{agent_command(docker)}\n"
    )


def prepare_script(instance_id: str, token_sha256: str) -> str:
    """Make the instance directory (0700) with the token's hash (0600) and the batch script
    read from stdin."""
    if not re.fullmatch(r"[0-9a-f]{64}", token_sha256):
        raise ValueError("the token hash must be 64 hex digits")
    d = _home(instance_dir(instance_id))
    return (
        f"set -e; umask 077; mkdir -p {_home(BASE_DIR)}/instances; chmod 700 {_home(BASE_DIR)}; "
        f"mkdir -p {d}/state; chmod 700 {d}; "
        f"printf '%s\\n' {token_sha256} > {d}/token.sha256; chmod 600 {d}/token.sha256; "
        f"cat > {d}/job.sh; chmod 700 {d}/job.sh; echo prepared"
    )


def find_job_command(instance_id: str, user: str) -> str:
    """The id of a job already submitted for the instance (a create repeated after a crash)."""
    return f"squeue -h --name={job_name(instance_id)} -u {shlex.quote(safe_id(user, 'user'))} -o %i"


def job_state_command(job_id: str) -> str:
    if not _JOB_ID_RE.match(job_id):
        raise ValueError(f"bad Slurm job id {job_id!r}")
    return f"squeue -h --jobs={job_id} --states=all -o '{SQUEUE_JOB_FORMAT}'"


def user_jobs_command(user: str) -> str:
    return f"squeue -h -u {shlex.quote(safe_id(user, 'user'))} -o '{SQUEUE_USER_FORMAT}'"


def agent_state_command(instance_id: str) -> str:
    return f"cat {_home(instance_dir(instance_id))}/state/agent.json 2>/dev/null || true"


def cancel_command(job_ids: list[str], instance_id: str, user: str) -> str:
    """`scancel` by id and by name: a job submitted before a crash lost its id is found by
    name. Exit status of `scancel` for an already ended job is ignored: gone is success."""
    ids = [j for j in job_ids if _JOB_ID_RE.match(j)]
    by_id = f"scancel {' '.join(ids)} 2>/dev/null; " if ids else ""
    return (
        f"{by_id}scancel --name={job_name(instance_id)} "
        f"-u {shlex.quote(safe_id(user, 'user'))} 2>/dev/null; true"
    )


def signal_command(job_ids: list[str], signal: str) -> str:
    """`scancel --signal=SIG --full`: the signal reaches the batch script and every process
    under it (without `--full` Slurm signals the job's steps only, and a batch job's agent runs
    in no step); the job is not cancelled, it ends when its script exits."""
    if signal not in ("TERM", "INT", "USR1", "USR2", "HUP"):
        raise ValueError(f"signal {signal!r} is not one the backend sends")
    ids = [j for j in job_ids if _JOB_ID_RE.match(j)]
    return f"scancel --signal={signal} --full {' '.join(ids)} 2>/dev/null; true" if ids else "true"


def remove_dir_command(instance_id: str) -> str:
    return f"rm -rf {_home(instance_dir(instance_id))}"


def tail_command(instance_id: str, lines: int = 20) -> str:
    d = _home(instance_dir(instance_id))
    return (
        f"tail -n {int(lines)} {d}/slurm.out 2>/dev/null; "
        f"tail -n {int(lines)} {d}/state/agent.log 2>/dev/null; true"
    )
