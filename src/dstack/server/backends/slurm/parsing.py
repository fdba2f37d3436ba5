"""Reading what Slurm's commands print (22.05 and later): nodes from `sinfo`, jobs from
`squeue`, the job id from `sbatch --parsable`, and what a job's state means for the instance.

Pure functions on text: the compute module runs the commands on the login node, these turn
their output into offers and decisions, and the unit tests feed them recorded outputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from dstack.models.instances import Gpu, InstanceType, Resources
from dstack.models.offers import InstanceAvailability, InstanceOfferWithAvailability
from dstack.models.runs import JobTerminationReason

BACKEND = "slurm"
# One line per (node, partition): name|partition|CPUs|memory MB|GRES|state (long form).
SINFO_FORMAT = "%N|%P|%c|%m|%G|%T"
SINFO_COMMAND = f"sinfo -h -N -o '{SINFO_FORMAT}'"
SQUEUE_JOB_FORMAT = "%T|%r|%N"
SQUEUE_USER_FORMAT = "%i|%j"
JOB_PREFIX = "dstack-"

# Node states (the long form `%T` prints; suffix flags stripped) a new job can start on now.
_FREE_STATES = {"idle", "mixed", "mix"}
# Busy with other jobs: a job sent there waits in Slurm's queue.
_BUSY_STATES = {"allocated", "alloc", "completing", "comp", "planned", "plnd"}
# Suffix flags of `%T`: `*` means the node does not respond (as good as down).
_STATE_FLAGS = "*~#!%$@^-+"


class SlurmOutputError(ValueError):
    """A command printed something this parser does not understand (a Slurm version or site
    configuration it was not written for); the message quotes the line."""


@dataclass(frozen=True)
class Node:
    name: str
    partition: str
    cpus: int
    memory_mib: int
    gpu_name: str | None
    gpu_count: int
    state: str  # as printed, flags included

    @property
    def availability(self) -> InstanceAvailability:
        return node_availability(self.state)


def node_availability(state: str) -> InstanceAvailability:
    """idle/mixed: available; allocated: busy; down, drained, not responding: not available.
    A powered-down node (`idle~`) is available: Slurm powers it up for the job."""
    state = state.strip().lower()
    if state.endswith("*"):
        return InstanceAvailability.NOT_AVAILABLE
    base = state.rstrip(_STATE_FLAGS)
    if base in _FREE_STATES:
        return InstanceAvailability.AVAILABLE
    if base in _BUSY_STATES:
        return InstanceAvailability.BUSY
    return InstanceAvailability.NOT_AVAILABLE


def _split_top(text: str) -> list[str]:
    """Split at commas outside parentheses: `gpu:a100:4(S:0,1),shard:8` is two entries."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_gres(text: str) -> tuple[str | None, int]:
    """(GPU type or None, count) from a `%G` field: `(null)`, `gpu:2`, `gpu:a100:4(S:0-1)`,
    `gpu:tesla:2(S:0),mps:100`. Several GPU entries of one node add up; the first named
    type wins."""
    text = text.strip()
    if not text or text == "(null)":
        return None, 0
    name: str | None = None
    count = 0
    for entry in _split_top(text):
        entry = re.sub(r"\(.*\)$", "", entry)
        fields = entry.split(":")
        if fields[0] != "gpu":
            continue
        if len(fields) == 2:
            n = fields[1]
        elif len(fields) >= 3:
            name = name or fields[1]
            n = fields[-1]
        else:
            raise SlurmOutputError(f"unrecognised GRES entry {entry!r}")
        if not n.isdigit():
            raise SlurmOutputError(f"unrecognised GPU count in GRES entry {entry!r}")
        count += int(n)
    return name, count


def parse_sinfo(text: str) -> list[Node]:
    """Nodes of `sinfo -h -N -o '%N|%P|%c|%m|%G|%T'`. The default partition is printed with a
    `*` (`cpu*`), which is dropped: `-p` wants the bare name."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.strip().split("|")
        if len(fields) != 6:
            raise SlurmOutputError(f"unexpected sinfo line {line!r} (want {SINFO_FORMAT})")
        name, partition, cpus, mem, gres, state = fields
        try:
            cpus_n, mem_n = int(cpus), int(mem.rstrip("+"))
        except ValueError as e:
            raise SlurmOutputError(f"unexpected CPUs or memory in sinfo line {line!r}") from e
        gpu_name, gpu_count = parse_gres(gres)
        nodes.append(
            Node(name, partition.rstrip("*"), cpus_n, mem_n, gpu_name, gpu_count, state.strip())
        )
    return nodes


def gpu_memory_mib(name: str) -> int:
    """Slurm does not know a GPU's memory: the smallest known variant of the model (0 when the
    model is unknown; a job asking for GPU memory then finds no offer here)."""
    try:
        from gpuhunt._internal.constraints import KNOWN_NVIDIA_GPUS  # type: ignore[import]
    except ImportError:  # pragma: no cover - gpuhunt is a dependency of the server
        return 0
    sizes = [g.memory for g in KNOWN_NVIDIA_GPUS if g.name.lower() == name.lower()]
    return min(sizes) * 1024 if sizes else 0


def _gpu_display(name: str) -> str:
    """`a100` → `A100`, as users write GPU names in `resources.gpu`."""
    return name.upper() if re.fullmatch(r"[a-z]+\d+[a-z]*", name) else name


def instance_name(partition: str, cpus: int, memory_mib: int, gpu: str | None, n: int) -> str:
    base = f"{partition}/{cpus}cpu-{memory_mib}MB"
    return base + (f"-{n}x{gpu or 'gpu'}" if n else "")


_RANK = {
    InstanceAvailability.AVAILABLE: 0,
    InstanceAvailability.BUSY: 1,
    InstanceAvailability.NOT_AVAILABLE: 2,
}


def offers_from_nodes(
    cluster: str,
    nodes: list[Node],
    partitions: list[str],
    gpu_of_partition: dict[str, str],
) -> list[InstanceOfferWithAvailability]:
    """One offer per (partition, node shape), from the partitions the configuration lists
    (empty: all). The offer is as available as the best of its nodes."""
    groups: dict[tuple[str, int, int, str | None, int], InstanceAvailability] = {}
    for node in nodes:
        if partitions and node.partition not in partitions:
            continue
        gpu = node.gpu_name or gpu_of_partition.get(node.partition) if node.gpu_count else None
        key = (node.partition, node.cpus, node.memory_mib, gpu, node.gpu_count)
        avail = node.availability
        best = groups.get(key)
        if best is None or _RANK[avail] < _RANK[best]:
            groups[key] = avail
    offers = []
    for (partition, cpus, mem, gpu, n), avail in sorted(groups.items(), key=lambda kv: kv[0]):
        display = _gpu_display(gpu) if gpu else ""
        gpus = [Gpu(name=display, memory_mib=gpu_memory_mib(display))] * n if n else []
        resources = Resources(cpus=cpus, memory_mib=mem, gpus=gpus)
        offers.append(
            InstanceOfferWithAvailability(
                backend=BACKEND,
                instance=InstanceType(
                    name=instance_name(partition, cpus, mem, display or None, n),
                    resources=resources,
                ),
                region=cluster,
                availability_zones=[partition],
                price=0.0,
                availability=avail,
            )
        )
    return offers


def parse_sbatch(text: str) -> str:
    """The job id of `sbatch --parsable`: `123` or `123;cluster` (federations)."""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    job_id = line.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise SlurmOutputError(f"sbatch printed no job id: {text.strip()!r}")
    return job_id


@dataclass(frozen=True)
class JobState:
    state: str  # PENDING, RUNNING, ... (`%T`)
    reason: str  # `%r`: why it pends or ended (`None` when nothing to say)
    node: str  # `%N`: the node(s) it runs on ("" while pending)


def parse_squeue_job(text: str) -> JobState | None:
    """The first line of `squeue -h --jobs=ID -o '%T|%r|%N'`; None when Slurm no longer
    lists the job."""
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.strip().split("|")
        if len(fields) != 3:
            raise SlurmOutputError(f"unexpected squeue line {line!r} (want {SQUEUE_JOB_FORMAT})")
        return JobState(fields[0].strip().upper(), fields[1].strip(), fields[2].strip())
    return None


def parse_squeue_user(text: str) -> list[tuple[str, str]]:
    """(job id, job name) pairs of `squeue -h -u USER -o '%i|%j'`."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        job_id, sep, name = line.strip().partition("|")
        if not sep or not job_id:
            raise SlurmOutputError(f"unexpected squeue line {line!r} (want {SQUEUE_USER_FORMAT})")
        out.append((job_id, name))
    return out


def instance_of_job(name: str) -> str | None:
    return name[len(JOB_PREFIX) :] if name.startswith(JOB_PREFIX) and len(name) > 7 else None


class Phase(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    GONE = "gone"


# Still alive in Slurm: waiting, or starting/running/being suspended on a node.
_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
_RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}
_ENDED = {
    "NODE_FAIL": "the node failed",
    "PREEMPTED": "Slurm preempted it",
    "TIMEOUT": "it reached its time limit (max_duration)",
    "CANCELLED": "it was cancelled outside dstack (scancel)",
    "COMPLETED": "it ended (the agent exited)",
    "FAILED": "it failed (the agent exited with an error)",
    "OUT_OF_MEMORY": "it ran out of memory",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "it reached its deadline",
    "REVOKED": "the federation revoked it",
    "SPECIAL_EXIT": "it ended with a special exit state",
}


# How the dstack jobs of an ended Slurm job end, where it is not an interruption (a failed
# node or a preemption is: `retry: [interruption]` resubmits those).
_JOB_REASONS = {
    "TIMEOUT": JobTerminationReason.MAX_DURATION_EXCEEDED.value,
    "CANCELLED": JobTerminationReason.EXECUTOR_ERROR.value,
    "OUT_OF_MEMORY": JobTerminationReason.EXECUTOR_ERROR.value,
    "DEADLINE": JobTerminationReason.MAX_DURATION_EXCEEDED.value,
}


def job_reason(job: JobState | None) -> str | None:
    """The `JobTerminationReason` value the dstack job ends with (None: interrupted)."""
    if job is None:
        return None
    return _JOB_REASONS.get(job.state.split()[0].rstrip("+"))


def phase_of(job: JobState | None) -> Phase:
    if job is None:
        return Phase.GONE
    state = job.state.split()[0].rstrip("+")  # `CANCELLED by 1000` in some outputs
    if state in _PENDING:
        return Phase.PENDING
    if state in _RUNNING:
        return Phase.RUNNING
    return Phase.GONE


def gone_message(cluster: str, job_id: str, job: JobState | None) -> str:
    """What the user reads as the instance's reason when Slurm lost or ended its job."""
    where = f"Slurm job {job_id} on cluster {cluster}"
    if job is None:
        return f"{where} is no longer known to Slurm (it ended, or was cancelled outside dstack)"
    state = job.state.split()[0].rstrip("+")
    why = _ENDED.get(state, "it ended")
    reason = f", reason {job.reason}" if job.reason and job.reason != "None" else ""
    node = f" on node {job.node}" if job.node else ""
    return f"{where} is {state}{node}: {why}{reason}"


def pending_message(job: JobState) -> str:
    """Why the job waits, in Slurm's words (`Resources`, `Priority`, `QOSMaxJobsPerUserLimit`)."""
    reason = job.reason if job.reason and job.reason != "None" else "no reason given"
    return f"pending in Slurm ({reason})"
