"""The configuration files of the test cluster: `slurm.conf`, `cgroup.conf`, `gres.conf` and the
per-namespace `hosts` files.

Kept apart from the daemons (cluster.py) so each setting carries its reason next to it. Every
path the daemons use lives in the cluster's runtime directory; nothing is written to the
machine's /etc except the per-namespace directories `ip netns exec` binds over /etc.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLUSTER_NAME = "dstest"
# What each node announces. `SlurmdParameters=config_overrides` makes slurmd take these as
# given rather than compare them with the machine (every node shares this machine's CPUs and
# memory, so the real counts would be the same for all and differ from CI machine to machine).
NODE_CPUS = 2
NODE_MEMORY_MB = 2000
GPU_COUNT = 2


@dataclass(frozen=True)
class Node:
    name: str
    address: str  # on the cluster network, reached from the login host only
    gateway: str  # the login host's end of this node's link
    gpus: int = 0


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple[str, ...]
    default: bool = False


def partitions_for(nodes: list[Node]) -> list[Partition]:
    """`cpu` has every node and is the default; `gpu` has the nodes with (fake) GPUs."""
    parts = [Partition("cpu", tuple(n.name for n in nodes), default=True)]
    gpu_nodes = tuple(n.name for n in nodes if n.gpus)
    if gpu_nodes:
        parts.append(Partition("gpu", gpu_nodes))
    return parts


def slurm_conf(
    ctl_host: str, ctl_address: str, run: Path, nodes: list[Node], munge_socket: Path
) -> str:
    """`ctl_host` must be the machine's `hostname -s`: the namespaces share its UTS name and
    slurmctld refuses to start on a host that is not `SlurmctldHost`."""
    lines = [
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={ctl_host}({ctl_address})",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={run / 'ctld-state'}",
        f"SlurmdSpoolDir={run / 'spool'}/%n",
        f"SlurmctldPidFile={run / 'slurmctld.pid'}",
        f"SlurmdPidFile={run / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={run / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={run / 'log' / 'slurmd-%n.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=debug",
        # Only the batch script's process tree is tracked (no cgroups in a namespace here):
        # a process that daemonizes out of it escapes scancel.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        # Cores and memory are consumed, so two small jobs share a node and `--mem` counts.
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "DefMemPerCPU=100",
        "SlurmdParameters=config_overrides",
        # Short timeouts: a killed node is DOWN within ~SlurmdTimeout, a restarted one
        # comes back by itself (ReturnToService=2).
        "SlurmdTimeout=6",
        "SlurmctldTimeout=10",
        "MessageTimeout=5",
        "InactiveLimit=0",
        "KillWait=2",
        "MinJobAge=300",
        "ReturnToService=2",
        "MailProg=/bin/true",
    ]
    if any(n.gpus for n in nodes):
        lines.append("GresTypes=gpu")
    for n in nodes:
        gres = f" Gres=gpu:{n.gpus}" if n.gpus else ""
        lines.append(
            f"NodeName={n.name} NodeAddr={n.address} CPUs={NODE_CPUS} "
            f"RealMemory={NODE_MEMORY_MB}{gres} State=UNKNOWN"
        )
    for p in partitions_for(nodes):
        default = "YES" if p.default else "NO"
        lines.append(
            f"PartitionName={p.name} Nodes={','.join(p.nodes)} Default={default} "
            "MaxTime=INFINITE State=UP"
        )
    return "\n".join(lines) + "\n"


def cgroup_conf() -> str:
    """slurmd loads a cgroup plugin even with proctrack/linuxproc; v1 is the one that starts
    on the empty tmpfs slurmd gets over /sys/fs/cgroup in its namespace."""
    return "CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n"


def gres_conf(nodes: list[Node], dev_dir: Path) -> str:
    """Fake GPUs: Slurm 22.05's slurmd drops a GPU without `File=` ("Removing file-less GPU
    ... from final GRES list", then the node is INVAL), so each has a device file:
    `<dev_dir>/<node>-gpu<i>`, a character device (Slurm refuses regular files) that is
    /dev/null's twin, made by the cluster. Slurm schedules them; nothing backs them."""
    lines = ["AutoDetect=off"]
    for n in nodes:
        if n.gpus:
            files = f"{dev_dir}/{n.name}-gpu[0-{n.gpus - 1}]"
            lines.append(f"NodeName={n.name} Name=gpu File={files}")
    return "\n".join(lines) + "\n"


def hosts_file(ctl_host: str, ctl_address: str, nodes: list[Node]) -> str:
    """The machine's own name resolves to the login host (srun on the login host gives its
    hostname to the steps that call it back), node names to node addresses."""
    lines = ["127.0.0.1 localhost", f"{ctl_address} {ctl_host}"]
    lines += [f"{n.address} {n.name}" for n in nodes]
    return "\n".join(lines) + "\n"
