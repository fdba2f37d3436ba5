"""One Slurm allocation for a `placement: cluster` fleet of N ≥ 2 nodes: all or nothing.

The fleet's N instances are still N dstack instances (the multi-node scheduler places the N
jobs of a replica on N whole instances of one cluster fleet), but on Slurm they come from one
`sbatch --nodes=N` whose script starts one agent per node with `srun`. Each instance claims a
slot (0..N-1, `mkdir` is the lock) in the group's directory on the login node and writes its
token's hash there; the agent of the slot's node (`SLURM_NODEID`) waits for that file, writes
the node's name and address, and serves. The first instance to get there submits the job; the
others join it. Slurm starts all N nodes together or none, and a node that fails ends the whole
allocation (`--kill-on-bad-exit`): every instance of the group is then gone together.

Directory (relative to the login user's home, shared with the nodes):
`.dstack-slurm/groups/<fleet id>/`: `job.sh`, `submit` (who submitted), `job_id`,
`slot-K/{instance, token.sha256, node, state/}`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from dstack.server.backends.slurm import scripts as sc

GROUP_PREFIX = "dstackg-"  # not `dstack-`: the inventory never takes it for an instance
MAX_NODES = 512


@dataclass(frozen=True)
class Group:
    fleet_id: str
    nodes: int


def group_of(request: dict[str, Any]) -> Group | None:
    """A host of a `placement: cluster` fleet of at least 2 nodes is part of a group."""
    nodes = int(request.get("fleet_nodes") or 0)
    if request.get("placement") != "cluster" or nodes < 2 or not request.get("fleet_id"):
        return None
    return Group(sc.safe_id(str(request["fleet_id"]), "fleet id"), min(nodes, MAX_NODES))


def group_dir(fleet_id: str) -> str:
    return f"{sc.BASE_DIR}/groups/{sc.safe_id(fleet_id, 'fleet id')}"


def slot_dir(fleet_id: str, slot: int) -> str:
    return f"{group_dir(fleet_id)}/slot-{int(slot)}"


def group_job_name(fleet_id: str) -> str:
    return GROUP_PREFIX + sc.safe_id(fleet_id, "fleet id")


def batch_script(group: Group, docker: bool = False) -> str:
    """`srun` one task per node, each running the agent of its slot in the foreground (a step
    of the job: `scancel` reaches it). A slot's agent waits until its instance wrote the
    token's hash (an instance may join after the allocation started)."""
    g = f"$HOME/{group_dir(group.fleet_id)}"
    node_task = (
        'D="$G/slot-$SLURM_NODEID"; '
        'while [ ! -f "$D/token.sha256" ]; do sleep 0.2; done; '
        'mkdir -p "$D/state" && rm -f "$D/state/agent.json"; '
        'echo "$(hostname) $(hostname -i | cut -d" " -f1)" > "$D/node.tmp" '
        '&& mv "$D/node.tmp" "$D/node"; ' + sc.agent_command(docker)
    )
    return (
        "#!/bin/sh\n"
        f"# dstack fleet {group.fleet_id}: one agent per node, for as long as this job runs\n"
        f'export G="{g}"\n'
        'echo "nodes=$SLURM_JOB_NODELIST job=$SLURM_JOB_ID started=$(date +%s)"\n'
        f"exec srun --nodes={group.nodes} --ntasks={group.nodes} --ntasks-per-node=1 "
        '--cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1 '
        f"sh -c {shlex.quote(node_task)}\n"
    )


def sbatch_command(group: Group, req: sc.JobRequest) -> str:
    """The allocation: N nodes of the offer's shape, one task each."""
    g = f'"$HOME"/{group_dir(group.fleet_id)}'
    args = [
        "sbatch",
        "--parsable",
        f"--job-name={group_job_name(group.fleet_id)}",
        f"--partition={shlex.quote(sc.safe_id(req.partition, 'partition'))}",
        f"--nodes={group.nodes}",
        f"--ntasks={group.nodes}",
        "--ntasks-per-node=1",
        "--no-requeue",
        f"--cpus-per-task={int(req.cpus)}",
        f"--mem={int(req.memory_mib)}M",
    ]
    if req.gpus:
        args.append(f"--gres=gpu:{int(req.gpus)}")
    minutes = sc.time_limit_minutes(req.max_duration_s)
    if minutes:
        args.append(f"--time={minutes}")
    args += [f"--chdir={g}", f"--output={g}/slurm.out", f"{g}/job.sh"]
    return " ".join(args)


def join_script(group: Group, instance_id: str, token_sha256: str, sbatch: str) -> str:
    """Run on the login node, the batch script on stdin. Prints `slot=K job=ID`.

    A group whose job Slurm no longer lists (ended, cancelled) is stale and starts over. The
    instance takes the slot it already holds (a create repeated after a crash), else the first
    free one; with none free it exits 3. The first to `mkdir submit` runs `sbatch`; the others
    wait for `job_id` (up to 10 s). A failed `sbatch` frees the slot and the lock."""
    if not re.fullmatch(r"[0-9a-f]{64}", token_sha256):
        raise ValueError("the token hash must be 64 hex digits")
    me = sc.safe_id(instance_id)
    g = f'"$HOME"/{group_dir(group.fleet_id)}'
    last = group.nodes - 1
    return (
        f'set -e; umask 077; mkdir -p {g}; chmod 700 "$HOME"/{sc.BASE_DIR}; G={g}; '
        'if [ -s "$G/job_id" ] && [ -z "$(squeue -h -j "$(cat "$G/job_id")" -o %i 2>/dev/null)" ]; '
        'then rm -rf "$G"; mkdir -p "$G"; fi; '
        "K=; "
        f"for k in $(seq 0 {last}); do "
        f'[ "$(cat "$G/slot-$k/instance" 2>/dev/null)" = {me} ] && K=$k && break; done; '
        'if [ -z "$K" ]; then '
        f"for k in $(seq 0 {last}); do "
        f'if mkdir "$G/slot-$k" 2>/dev/null; then '
        f'echo {me} > "$G/slot-$k/instance"; K=$k; break; fi; '
        "done; fi; "
        '[ -n "$K" ] || { echo "all slots of the group are taken" >&2; cat >/dev/null; exit 3; }; '
        f"printf '%s\\n' {token_sha256} > \"$G/slot-$K/token.tmp\"; "
        'mv "$G/slot-$K/token.tmp" "$G/slot-$K/token.sha256"; '
        'if mkdir "$G/submit" 2>/dev/null; then '
        'cat > "$G/job.sh"; chmod 700 "$G/job.sh"; '
        f'if ! {sbatch} > "$G/job_id.tmp" 2>"$G/sbatch.err"; then '
        'cat "$G/sbatch.err" >&2; rm -rf "$G/submit" "$G/slot-$K"; exit 1; fi; '
        'mv "$G/job_id.tmp" "$G/job_id"; '
        "else cat >/dev/null; fi; "
        'i=0; while [ ! -s "$G/job_id" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; '
        '[ -s "$G/job_id" ] || { echo "the group job was not submitted in time" >&2; exit 1; }; '
        'echo "slot=$K job=$(cut -d";" -f1 "$G/job_id")"'
    )


def parse_join(out: str) -> tuple[int, str]:
    m = re.search(r"slot=(\d+) job=(\d+)", out)
    if not m:
        raise ValueError(f"unexpected answer from the group join: {out.strip()[:200]!r}")
    return int(m.group(1)), m.group(2)


def slot_state_command(fleet_id: str, slot: int) -> str:
    """The slot's node (`name address`) and the agent's state file, split by a `|` line."""
    d = f'"$HOME"/{slot_dir(fleet_id, slot)}'
    return f"cat {d}/node 2>/dev/null; echo '|'; cat {d}/state/agent.json 2>/dev/null; true"


def live_job_command(job_id: str) -> str:
    """The job's id while Slurm lists it as pending or running; nothing once it ended."""
    if not job_id.isdigit():
        raise ValueError(f"bad Slurm job id {job_id!r}")
    return f"squeue -h -j {job_id} -o %i 2>/dev/null; true"


def leave_command(fleet_id: str, slot: int, instance_id: str) -> str:
    """Free the slot if this instance still holds it (a newer group may have taken it)."""
    d = f'"$HOME"/{slot_dir(fleet_id, slot)}'
    me = sc.safe_id(instance_id)
    return f'[ "$(cat {d}/instance 2>/dev/null)" = {me} ] && rm -rf {d}; true'
