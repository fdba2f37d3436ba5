"""The job as the agent runs it: runtime, command, and the environment every job gets
(configuration.md §10: DSTACK_RUN_NAME, DSTACK_NODE_RANK, DSTACK_GPUS_NUM, ...)."""

from __future__ import annotations

import functools
import json
from typing import Any

from dstack.models.runs import JobRuntimeData, JobSpec, RunSpec
from dstack.server.db import tables as t


def _gpu_count(host_info: dict[str, Any], used_blocks: int, total_blocks: int) -> int:
    gpus = len(host_info.get("gpus") or [])
    if total_blocks > 1:
        return gpus * used_blocks // total_blocks
    return gpus


def _internal_ip(host_info: dict[str, Any]) -> str:
    if host_info.get("internal_ip"):
        return host_info["internal_ip"]
    addresses = host_info.get("addresses") or []
    return addresses[0] if addresses else "127.0.0.1"


# How far above `port + N` the agent may look for a free port for replica N > 0.
REPLICA_PORT_SEARCH = 64


def service_listen_port(spec: JobSpec, runtime: str) -> int | None:
    """The port this replica's app is asked to listen on. In a container it is the configured
    `port` (published by the agent). The process runtime shares the host's network with the
    other replicas, so replica N starts from `port + N`; the app reads it from
    DSTACK_SERVICE_PORT. The agent may move replica N > 0 to a free port (`listen_fields`):
    the port actually used is the one its state reports (`listen_port`)."""
    if not spec.service_port:
        return None
    if runtime == "process":
        return spec.service_port + spec.replica_num
    return spec.service_port


def listen_fields(spec: JobSpec, runtime: str, env: dict[str, str]) -> dict[str, Any]:
    """What the agent checks before it starts a process-runtime replica: replica 0 keeps the
    configured port exactly (apps often hard-code it), replica N > 0 may take the next free
    port of a window. A user who sets DSTACK_SERVICE_PORT in `env` chose it: no check."""
    listen = service_listen_port(spec, runtime)
    if runtime != "process" or listen is None or env.get("DSTACK_SERVICE_PORT") != str(listen):
        return {}
    search = 1 if spec.replica_num == 0 else REPLICA_PORT_SEARCH
    return {"listen_port": listen, "listen_port_search": search}


def job_env(
    job: t.Job,
    run: t.Run,
    spec: JobSpec,
    host_info: dict[str, Any],
    gpus: int,
    repo_dir: str | None,
    working_dir: str | None,
    cluster: list[str] | None = None,
    fleet_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """`cluster`: every node's internal IP by rank (multi-node); `fleet_env`: the SSH fleet's
    `env`, which the job's own env overrides."""
    run_spec = RunSpec.model_validate_json(run.run_spec)
    ips = cluster or [_internal_ip(host_info)]
    env = {
        **(fleet_env or {}),
        "DSTACK_RUN_ID": run.id,
        "DSTACK_JOB_ID": job.id,
        "DSTACK_RUN_NAME": run.run_name,
        "DSTACK_REPO_ID": run_spec.repo_id,
        "DSTACK_NODES_IPS": "\n".join(ips),
        "DSTACK_MASTER_NODE_IP": ips[0],
        "DSTACK_NODE_RANK": str(spec.job_num),
        "DSTACK_NODES_NUM": str(spec.jobs_per_replica),
        "DSTACK_GPUS_PER_NODE": str(gpus),
        "DSTACK_GPUS_NUM": str(gpus * spec.jobs_per_replica),
    }
    if repo_dir:
        env["DSTACK_REPO_DIR"] = repo_dir
    if working_dir:
        env["DSTACK_WORKING_DIR"] = working_dir
    env.update(spec.env)  # the user's env wins
    return env


def ssh_keys(run: t.Run, project_public_key: str | None) -> list[str]:
    """Keys the job's SSH server authorizes: the project's (the server's own access) and the
    key the user submitted the run with (`ssh <run>`, IDEs, port forwarding)."""
    keys = [project_public_key, RunSpec.model_validate_json(run.run_spec).ssh_key_pub]
    return [k.strip() for k in keys if k and k.strip()]


def _host_keys(run: t.Run, remote_host: bool) -> list[str]:
    """A remote host is the ProxyJump to the job's sshd, so its sshd must let the user's key
    in while the job exists (the agent adds and later removes it); a host that is the server's
    own machine needs nothing."""
    if not remote_host:
        return []
    key = RunSpec.model_validate_json(run.run_spec).ssh_key_pub
    return [key.strip()] if key and key.strip() else []


def agent_job_spec(
    job: t.Job,
    run: t.Run,
    spec: JobSpec,
    inst: t.Instance,
    host_info: dict[str, Any],
    cluster: list[str] | None = None,
    keys: list[str] | None = None,
    label: str | None = None,
    remote_host: bool = True,
) -> tuple[dict[str, Any], str | None]:
    """The agent's job request, or an error text when this host cannot run the job."""
    gpus = _gpu_count(host_info, job.used_blocks or 1, inst.total_blocks)
    if spec.image_name:
        if not host_info.get("docker"):
            host = json.loads(inst.remote_connection or "{}").get("hostname")
            where = f"instance {inst.name}" + (f" (host {host})" if host else "")
            note = host_info.get("docker_note")
            return {}, (
                f"the configuration sets image {spec.image_name}, but {where} has no "
                "Docker engine" + (f": {note}" if note else "") + "; remove `image` to run the "
                "commands directly on the host, or install and start Docker there (the SSH user "
                "must be able to run `docker info`)"
            )
        runtime = "docker"
        repo_dir = "/workflow"
        working_dir = spec.working_dir or repo_dir
    else:
        # The agent sets DSTACK_REPO_DIR and DSTACK_WORKING_DIR to the real host paths.
        runtime = "process"
        repo_dir = None
        working_dir = spec.working_dir if spec.working_dir not in (None, ".") else None
    env_repo_dir, env_working_dir = (repo_dir, working_dir) if runtime == "docker" else (None, None)
    env = job_env(
        job,
        run,
        spec,
        host_info,
        gpus,
        env_repo_dir,
        env_working_dir,
        cluster,
        json.loads(inst.remote_connection or "{}").get("env"),
    )
    listen = service_listen_port(spec, runtime)
    if listen is not None:
        env.setdefault("DSTACK_SERVICE_PORT", str(listen))
    shm = None
    res = (spec.requirements or {}).get("resources") or {}
    if res.get("shm_size"):
        shm = int(float(res["shm_size"]) * 1024)
    body = {
        "id": job.id,
        "name": spec.job_name,
        "runtime": runtime,
        "commands": spec.commands,
        "env": env,
        "working_dir": working_dir,
        "image": spec.image_name,
        "shm_size_mib": shm,
        "ports": [a["port"] for a in spec.app_specs]
        + ([spec.service_port] if spec.service_port else []),
        "volumes": [],
        "gpus": -1 if gpus and inst.total_blocks <= 1 else gpus,
        "max_duration": spec.max_duration,
        "stop_duration": spec.stop_duration if spec.stop_duration is not None else 300,
        "ssh_keys": list(keys or []),
        "host_ssh_keys": _host_keys(run, remote_host),
        "host_label": label or inst.hostname or inst.name,
        "mpi_hostfile": mpi_hostfile(cluster or [_internal_ip(host_info)], gpus),
        **listen_fields(spec, runtime, env),
        **runtime_fields(run, spec, runtime),
    }
    return body, None


def runtime_fields(run: t.Run, spec: JobSpec, runtime: str) -> dict[str, Any]:
    """`user`, `python`, `privileged` and the image's `registry_auth`, as the agent takes them.
    The credentials are read from the run's configuration when the job starts, so they are
    not copied into every job's spec."""
    out: dict[str, Any] = {"user": spec.user, "privileged": spec.privileged}
    if runtime == "process":
        out["python"] = spec.python
    else:
        auth = RunSpec.model_validate_json(run.run_spec).configuration.get("registry_auth")
        if auth:
            out["registry_auth"] = {"username": auth["username"], "password": auth["password"]}
    return out


def mpi_hostfile(ips: list[str], gpus_per_node: int) -> str:
    """The text of the file DSTACK_MPI_HOSTFILE names (the agent writes it): one line per node
    by rank, `<ip> slots=<gpus>` on GPU nodes, `<ip>` on CPU nodes (the reference's format).
    Every node is taken to have this node's GPU count: the nodes of a replica share a shape."""
    slots = f" slots={gpus_per_node}" if gpus_per_node > 0 else ""
    return "".join(f"{ip}{slots}\n" for ip in ips)


# Where the job's SSH server is, in the container-port terms of the reference: the runner's sshd
# listens on 10022 inside the job, and `job_runtime_data.ports` maps it to the host port.
JOB_SSH_PORT = 10022


def runtime_data(
    body: dict[str, Any], state: dict[str, Any], spec: JobSpec | None = None
) -> JobRuntimeData:
    """What the agent said about the started job, in the reference's `job_runtime_data` shape:
    the real working dir, the user sessions run as, and container -> host ports (the process
    runtime shares the host's network, so an app port is its own host port, except a service
    replica's: it maps to the port the agent chose, which the proxy and the prober read)."""
    ports: dict[int, int] = {}
    if body.get("runtime") == "process":
        ports.update({int(p): int(p) for p in body.get("ports") or []})
        listen = state.get("listen_port") or (
            service_listen_port(spec, "process") if spec is not None else None
        )
        if spec is not None and spec.service_port and listen:
            ports[spec.service_port] = int(listen)
    else:
        ports.update({int(k): int(v) for k, v in (state.get("ports") or {}).items()})
    if state.get("ssh_port") and ssh_ready(state):
        ports[JOB_SSH_PORT] = int(state["ssh_port"])
    return JobRuntimeData(
        network_mode="host",
        working_dir=state.get("working_dir") or body.get("working_dir"),
        username=state.get("ssh_user"),
        ports=ports or None,
        ssh_error=state.get("ssh_error"),
        volume_names=[v["name"] for v in body.get("volumes") or [] if v.get("name")] or None,
    )


def ssh_ready(state: dict[str, Any]) -> bool:
    """Whether the job's SSH server accepts connections (an agent older than `ssh_ready` is
    taken at its word, as before): the SSH port is published only then, so an attach never
    races the server's start."""
    return bool(state.get("ssh_ready", True))


@functools.lru_cache(maxsize=1024)
def _ssh_and_ports(jrd_json: str) -> tuple[dict[int, int], str | None]:
    """Parsed once per value: a running job is compared with its agent twice a second."""
    jrd = JobRuntimeData.model_validate_json(jrd_json)
    return dict(jrd.ports or {}), jrd.ssh_error


def published_ports(jrd_json: str | None, agent_job: dict[str, Any] | None) -> str | None:
    """The runtime data with what the agent learned after the start: the host ports docker
    published once the container ran, the job's SSH port once its server listens, or why it
    has none; None when nothing is new."""
    if not jrd_json or not agent_job:
        return None
    published = {int(k): int(v) for k, v in (agent_job.get("ports") or {}).items()}
    if agent_job.get("ssh_port") and ssh_ready(agent_job):
        published[JOB_SSH_PORT] = int(agent_job["ssh_port"])
    error = agent_job.get("ssh_error")
    if not published and not error:
        return None
    known, known_error = _ssh_and_ports(jrd_json)
    if all(known.get(k) == v for k, v in published.items()) and error == known_error:
        return None
    jrd = JobRuntimeData.model_validate_json(jrd_json)
    ports = {**(jrd.ports or {}), **published}
    update = {"ports": ports or None, "ssh_error": error}
    return jrd.model_copy(update=update).model_dump_json()
