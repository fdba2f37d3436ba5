"""From a validated run configuration to the job specs the server schedules and runs.

One job per node of a task (job 0 is the master), one per replica of a service, one for a dev
environment. Defaults the server fills in (stop_duration, the GPU vendor) are written here so
the spec a user reads back with `dstack run get --json` is what actually ran.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

from dstack.errors import ServerClientError
from dstack.models.runs import JobSpec
from dstack.server.services.ide_install import IDE_NAMES, install_command
from dstack.server.services.repos import job_repo_data
from dstack.server.services.runtime_fields import container_image, runtime_needs

DEFAULT_STOP_DURATION = 300
OFF_STOP_DURATION = 10 * 365 * 24 * 3600
DEFAULT_SHELL = "/bin/bash"
LOCAL_REPO_DIR = "/workflow"


def join_commands(commands: list[str]) -> str:
    """`a && b`, with a backgrounded command wrapped so `&` does not swallow the `&&`."""
    parts = []
    for cmd in commands:
        cmd = cmd.strip()
        if cmd.endswith("&"):
            cmd = "{ " + cmd + " }"
        parts.append(cmd)
    return " && ".join(parts)


def _shell(conf: Any) -> str:
    shell = getattr(conf, "shell", None)
    if shell in (None, ""):
        return "/bin/sh" if container_image(conf) else DEFAULT_SHELL
    return {"sh": "/bin/sh", "bash": "/bin/bash"}.get(shell, shell)


def _dev_env_commands(conf: Any, run_name: str, working_dir: str) -> list[str]:
    """The IDE server pre-install (ide_install.py), setup and init, then the IDE link and SSH
    hint, then sleep until stopped.

    The link takes the working dir from `$DSTACK_WORKING_DIR` at run time: only the agent knows
    the real path (the process runtime runs in the job's directory on the host, docker in the
    container's). Run names are `[a-z0-9-]`, so they are safe inside double quotes.
    """
    ide = getattr(conf, "ide", None)
    ide = getattr(ide, "value", ide)
    install = install_command(ide, getattr(conf, "version", None))
    cmds = [install] if install else []
    cmds += list(getattr(conf, "setup", None) or []) + list(getattr(conf, "init", None) or [])
    where = '"${DSTACK_WORKING_DIR:-' + working_dir + '}"'
    if ide in ("vscode", "cursor", "windsurf"):
        cmds.append(f"echo {shlex.quote('To open in ' + IDE_NAMES[ide] + ', use link below:')}")
        cmds.append(f"echo '  {ide}://vscode-remote/ssh-remote+{run_name}'{where}")
    elif ide == "zed":
        cmds.append(f"echo {shlex.quote('To open in Zed, use link below:')}")
        cmds.append(f"echo '  zed://ssh/{run_name}'{where}")
    cmds.append(f"echo {shlex.quote('To connect via SSH, use: `ssh ' + run_name + '`')}")
    cmds.append("echo 'To exit, press Ctrl+C.'")
    cmds.append("tail -f /dev/null")
    return cmds


def seconds_or_none(value: Any) -> int | None:
    if value in (None, "off") or value is False:
        return None
    return int(value)


def stop_duration(conf: Any) -> int:
    value = getattr(conf, "stop_duration", None)
    if value == "off":
        return OFF_STOP_DURATION
    return DEFAULT_STOP_DURATION if value is None else int(value)


def requirements(conf: Any, nodes: int | None = None) -> dict[str, Any]:
    resources = conf.resources.model_dump(mode="json")
    gpu = resources.get("gpu") or {"count": {"min": 0, "max": None}}
    count_max = (gpu.get("count") or {}).get("max")
    image = container_image(conf)
    if not gpu.get("vendor") and not gpu.get("name") and count_max != 0 and not image:
        gpu["vendor"] = "nvidia"
    resources["gpu"] = gpu
    spot = getattr(conf, "spot_policy", None)
    return {
        "resources": resources,
        "max_price": getattr(conf, "max_price", None),
        "spot": getattr(spot, "value", spot) or "on-demand",
        "reservation": getattr(conf, "reservation", None),
        "multinode": (nodes if nodes is not None else _nodes(conf)) > 1,
        "backend_options": None,
    }


def node_confs(conf: Any) -> list[Any]:
    """The configuration each node of a replica runs, by job number. A task with node
    `groups` (configuration.md §7) runs its groups' nodes in order (job 0, the master, is the
    first group's first node), each with its group's `resources`, `commands` and `ports` laid
    over the task's; anything else runs `nodes` copies of itself."""
    groups = getattr(conf, "groups", None) if conf.type == "task" else None
    if not groups:
        return [conf] * _nodes(conf)
    out: list[Any] = []
    for group in groups:
        update = {
            "resources": group.resources,
            "commands": [_group_ips(c, groups) for c in group.commands or []],
            "ports": list(group.ports),
            "groups": None,
        }
        out += [conf.model_copy(update=update)] * group.nodes
    return out


_GROUP_IP_RE = re.compile(r"\$\{\{\s*groups\[(\d+)\]\.nodes\[(\d+)\]\.IP_ADDRESS\s*\}\}")
_GROUP_ANY_RE = re.compile(r"\$\{\{\s*groups\b[^}]*\}\}")


def _group_ips(command: str, groups: list[Any]) -> str:
    """`${{ groups[i].nodes[j].IP_ADDRESS }}` -> that node's line of `$DSTACK_NODES_IPS` (the
    IPs by rank, known only when the job starts), bounds checked here; any other `groups`
    interpolation is refused, never left in the command."""

    def sub(match: re.Match[str]) -> str:
        i, j = int(match.group(1)), int(match.group(2))
        if i >= len(groups) or j >= groups[i].nodes:
            raise ServerClientError(
                f"{match.group(0)}: no such node (groups: "
                + ", ".join(f"[{k}] {g.nodes} nodes" for k, g in enumerate(groups))
                + ")",
                field="run_spec.configuration.groups",
            )
        rank = sum(g.nodes for g in groups[:i]) + j
        return f"$(printf '%s\\n' \"$DSTACK_NODES_IPS\" | sed -n '{rank + 1}p')"

    out = _GROUP_IP_RE.sub(sub, command)
    other = _GROUP_ANY_RE.search(out)
    if other:
        raise ServerClientError(
            f"unsupported interpolation {other.group(0)} (only "
            "${{ groups[i].nodes[j].IP_ADDRESS }})",
            field="run_spec.configuration.groups",
        )
    return out


def _nodes(conf: Any) -> int:
    if conf.type == "task":
        return int(getattr(conf, "nodes", 1) or 1)
    return 1


def _replicas(conf: Any) -> int:
    if conf.type != "service":
        return 1
    replicas = getattr(conf, "replicas", None)
    low = getattr(replicas, "min", None) if replicas is not None else None
    return max(1, int(low or 1))


def _commands(conf: Any, run_name: str, working_dir: str) -> list[str]:
    """With `entrypoint` (docker style), the job runs the entrypoint with the commands as
    its arguments, on either runtime; otherwise the commands run in the shell."""
    entrypoint = getattr(conf, "entrypoint", None)
    if entrypoint:
        return shlex.split(entrypoint) + list(getattr(conf, "commands", None) or [])
    shell = _shell(conf)
    if conf.type == "dev-environment":
        body = _dev_env_commands(conf, run_name, working_dir)
    else:
        body = list(getattr(conf, "commands", None) or [])
    if not body:
        return []  # an image's own entrypoint runs
    return [shell, "-c", join_commands(body)]


def service_probes(conf: Any) -> list[dict[str, Any]]:
    """The service's probes; a model service without `probes` gets a one-token chat request
    (configuration.md §12), and `probes: []` turns probing off."""
    if conf.type != "service":
        return []
    if conf.probes is not None:
        return [p.model_dump(mode="json") for p in conf.probes]
    model = conf.model
    if model is None or getattr(model, "format", "openai") != "openai":
        return []
    body = {
        "model": model.name,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
    }
    return [
        {
            "type": "http",
            "url": model.prefix.rstrip("/") + "/chat/completions",
            "method": "post",
            "headers": [{"name": "Content-Type", "value": "application/json"}],
            "body": json.dumps(body),
            "timeout": 30,
            "interval": 15,
            "ready_after": 1,
            "until_ready": False,
        }
    ]


def replica_spec(
    run_name: str,
    conf: Any,
    repo_code_hash: str | None,
    replica_num: int,
    live: Mapping[str, int] | None = None,
) -> JobSpec:
    """The spec of one more replica of a service (autoscaling and rolling updates).

    With replica groups the new replica joins the first group that has fewer than its count
    among LIVE (replicas of the current deployment per group name): a rolling update numbers
    new replicas past the old ones, so the number alone cannot say which group it belongs to.
    Without LIVE, the number decides, as at submission."""
    groups = replica_groups(conf)
    if live is not None and len(groups) > 1:
        name, group_conf, _ = next((g for g in groups if live.get(g[0], 0) < g[2]), groups[0])
        return _replica_jobs(run_name, group_conf, repo_code_hash, replica_num, name)[0]
    specs = build_job_specs(run_name, conf, repo_code_hash)
    spec = next((js for js in specs if js.replica_num == replica_num), specs[0])
    return spec.model_copy(
        update={"replica_num": replica_num, "job_name": f"{run_name}-0-{replica_num}"}
    )


# What a replica group may set for its own replicas (configuration.md §12, "Replica group").
GROUP_FIELDS = (
    "resources", "spot_policy", "reservation", "commands", "image", "python", "nvcc", "docker",
    "privileged",
)  # fmt: skip


def replica_groups(conf: Any) -> list[tuple[str, Any, int]]:
    """(group name, the configuration its replicas run, how many) per replica group; a service
    without `groups`, and any other run, is one group named "0".

    A group's configuration is the service's with the group's own fields laid over it, so the
    rest of this module builds its jobs exactly as for a plain service."""
    groups = getattr(conf, "groups", None) if conf.type == "service" else None
    if not groups:
        return [("0", conf, _replicas(conf))]
    out = []
    for i, group in enumerate(groups):
        update = {
            f: getattr(group, f)
            for f in GROUP_FIELDS
            if f in group.model_fields_set and getattr(group, f) is not None
        }
        update |= {"groups": None, "replicas": group.replicas, "scaling": group.scaling}
        count = int(group.replicas.min or 0)
        out.append((group.name or str(i), conf.model_copy(update=update), count))
    return out


def build_job_specs(run_name: str, conf: Any, repo_code_hash: str | None) -> list[JobSpec]:
    specs: list[JobSpec] = []
    for group, group_conf, count in replica_groups(conf):
        first = len({js.replica_num for js in specs})
        for replica_num in range(first, first + count):
            specs += _replica_jobs(run_name, group_conf, repo_code_hash, replica_num, group)
    return specs


def _replica_jobs(
    run_name: str, conf: Any, repo_code_hash: str | None, replica_num: int, group: str
) -> list[JobSpec]:
    # Links and hints need an absolute path: the code directory when none is given.
    working_dir = getattr(conf, "working_dir", None) or LOCAL_REPO_DIR
    retry = getattr(conf, "retry", None)
    service_port = None
    if conf.type == "service":
        port = conf.port
        service_port = getattr(port, "container_port", port)
    confs = node_confs(conf)
    nodes = len(confs)
    return [
        JobSpec(
            replica_num=replica_num,
            job_num=job_num,
            job_name=f"{run_name}-{job_num}-{replica_num}",
            jobs_per_replica=nodes,
            replica_group=group,
            user=getattr(conf, "user", None),
            commands=_commands(node_conf, run_name, working_dir),
            env={k: v for k, v in (conf.env or {}).items() if v is not None},
            image_name=container_image(conf),
            privileged=bool(getattr(conf, "privileged", False)),
            python=runtime_needs(conf).python,
            nvcc=runtime_needs(conf).nvcc,
            max_duration=seconds_or_none(getattr(conf, "max_duration", None)),
            stop_duration=stop_duration(conf),
            requirements=requirements(node_conf, nodes),
            retry=retry.model_dump(mode="json") if retry is not None else None,
            working_dir=getattr(conf, "working_dir", None),
            repo_code_hash=repo_code_hash,
            repo_dir=LOCAL_REPO_DIR,
            repo_data=job_repo_data(conf),
            single_branch=getattr(conf, "single_branch", None),
            service_port=service_port,
            probes=service_probes(conf),
            app_specs=_app_specs(node_conf),
            volumes=job_volumes(conf, job_num) or None,
        )
        for job_num, node_conf in enumerate(confs)
    ]


_INTERPOLATION_RE = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")
# What a volume name may interpolate: the job's own number (the same value under both names).
_VOLUME_VARS = ("dstack.job_num", "dstack.node_rank")


def interpolate_volume_name(name: str, job_num: int) -> str:
    """`ckpt-${{ dstack.node_rank }}` -> `ckpt-1` for node 1: each node of a task gets its own
    volume. Anything else in `${{ }}` is refused, naming it (never left in the name)."""

    def sub(match: re.Match[str]) -> str:
        if match.group(1) not in _VOLUME_VARS:
            raise ServerClientError(
                f"volume name {name!r}: unsupported interpolation '${{{{ {match.group(1)} }}}}' "
                f"(only {' and '.join('${{ ' + v + ' }}' for v in _VOLUME_VARS)})",
                field="configuration.volumes",
            )
        return str(job_num)

    return _INTERPOLATION_RE.sub(sub, name)


def job_volumes(conf: Any, job_num: int) -> list[dict[str, Any]]:
    """The run's `volumes` as job `job_num` mounts them, names interpolated: a named volume
    `{name: [alternatives], path}` (the first usable one where the job goes is mounted), an
    instance volume `{instance_path, path, optional, read_only}`. Which named volume each is,
    and where it lives, is resolved against the database at plan and placement time."""
    out: list[dict[str, Any]] = []
    for mount in getattr(conf, "volumes", None) or []:
        if hasattr(mount, "instance_path"):
            out.append(mount.model_dump(mode="json"))
        else:
            names = [interpolate_volume_name(n, job_num) for n in mount.name]
            out.append({"name": names, "path": mount.path})
    return out


def _app_specs(conf: Any) -> list[dict[str, Any]]:
    ports = getattr(conf, "ports", None) or []
    out = []
    for p in ports:
        out.append({"port": p.container_port, "map_to_port": p.local_port, "app_name": "app"})
    return out
