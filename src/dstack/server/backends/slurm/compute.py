"""The `slurm` backend: one dstack instance is one Slurm batch job running the dstack agent.

Life of an instance:
1. `create_instance` (on the cluster's login node, over SSH): copies the agent zipapp once by
   hash, writes the instance directory (token hash, batch script) and submits it with `sbatch`;
   a repeat after a crash finds the job by its name `dstack-<instance id>`. Returns at once.
2. `advance` looks at the job with `squeue`: pending (Slurm's reason kept in
   `remote.slurm_reason`, shown by `diagnose` and the provisioning-timeout message), running
   (the agent's port is read from its state file in the shared home: the agent URL is
   `http://<node>:<port>`), or ended (`HostGone`, with Slurm's state and reason).
3. The server reaches the agent through the login node: a local port forward to
   `(node, agent port)`. Streams to a port on the node's loopback (the job's sshd, a service's
   app) are an HTTP `CONNECT` through the agent (`dstack.agent.relay`).
4. `terminate` sends SIGTERM to a running job's processes first (`scancel --signal=TERM
   --full`), `scancel`s what is still listed after a grace, waits until `squeue` no longer
   lists the job, and removes the instance directory.

The instances of a fixed-size `placement: cluster` fleet share one `sbatch --nodes=N` instead,
one node (slot) each: `group.py`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from dstack.models.backends import SlurmBackendConfig
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.server.backends.base import (
    BackendError,
    Capabilities,
    Compute,
    Host,
    HostGone,
    InventoryItem,
    NoCapacityError,
    OfferRequirements,
    Provisioning,
    Ready,
    Stream,
)
from dstack.server.backends.slurm import docker as dk
from dstack.server.backends.slurm import group as gr
from dstack.server.backends.slurm import parsing as sp
from dstack.server.backends.slurm import scripts as sc
from dstack.server.backends.slurm.login import LoginNodes, read_keys
from dstack.server.backends.slurm.relay import Relays, connect_through_agent
from dstack.server.backends.ssh import deploy
from dstack.server.backends.ssh.transport import TunnelTransport

log = logging.getLogger(__name__)

PHASE_SUBMITTED = "submitted"
PHASE_PENDING = "pending"
PHASE_STARTING = "starting"  # running in Slurm, the agent has not written its port yet
PHASE_RUNNING = "running"
# sbatch refusals that mean "this offer cannot be had" (the job may try another), not a fault.
_NO_CAPACITY = (
    "Requested node configuration is not available",
    "Invalid partition",
    "More processors requested than permitted",
    "Memory required by task is not available",
    "Job violates accounting/QOS policy",
    "QOSMax",
    "Node count specification invalid",
)
CANCEL_WAIT_S = 10.0


@functools.cache
def agent_zipapp() -> bytes:
    """The agent as one file, built once per server process from the installed code."""
    from dstack.agent import zipapp

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "dstack-agent.pyz"
        zipapp.build(target)
        return target.read_bytes()


class SlurmBackend(Compute):
    type = "slurm"
    # Docker per cluster (`docker: true` in config.yml): `no_docker_regions` names the others.
    capabilities = Capabilities(docker=True, multinode=True, spot=False, volumes=False)
    offers_ttl = 15.0  # node states change as jobs come and go
    provisioning_poll = 0.5  # one `squeue` on a pooled SSH connection

    def __init__(
        self,
        project: str,
        config: SlurmBackendConfig,
        login: Any = None,
        agent: Callable[[], bytes] = agent_zipapp,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.project = project
        self.projects = frozenset({project})
        self.config = config
        self.clusters = {c.name: c for c in config.clusters}
        # `login` runs commands on the login nodes and tunnels through them (tests pass a fake).
        self.login = login if login is not None else LoginNodes(config, read_keys(config))
        self.agent = agent
        self.sleep = sleep
        self.relays = Relays(self.open_stream)
        # A job may wait in Slurm's queue: pending longer than this ends the instance.
        self.provisioning_timeout = float(
            os.environ.get("DSTACK_SERVER_SLURM_PROVISIONING_TIMEOUT") or 1200
        )
        # How long a terminated instance's job may take to end on SIGTERM before `scancel`.
        self.stop_grace = float(os.environ.get("DSTACK_SERVER_SLURM_STOP_GRACE") or 10)

    async def _run(self, cluster: str, command: str, stdin: Any = None) -> tuple[int, str, str]:
        return await self.login.run(cluster, command, stdin)

    async def _must(self, cluster: str, command: str, stdin: Any = None) -> str:
        rc, out, err = await self._run(cluster, command, stdin)
        if rc != 0:
            what = command.split()[0]
            raise BackendError(
                f"{what} failed on the login node of cluster {cluster} (exit {rc}): "
                f"{(err or out).strip()}"
            )
        return out

    async def check(self) -> None:
        for name in self.clusters:
            out = await self._must(name, "sinfo --version")
            log.info("slurm cluster %s: %s", name, out.strip())

    # -- capacity -----------------------------------------------------------------------------

    async def offers(self, requirements: OfferRequirements) -> list[InstanceOfferWithAvailability]:
        offers: list[InstanceOfferWithAvailability] = []
        for name, cluster in self.clusters.items():
            if requirements.regions and name not in requirements.regions:
                continue
            try:
                nodes = sp.parse_sinfo(await self._must(name, sp.SINFO_COMMAND))
            except (BackendError, sp.SlurmOutputError) as e:
                log.warning("slurm cluster %s: no offers: %s", name, e)
                continue
            gpu_of = {p: g.gpu for g in cluster.gpu_partitions for p in g.partitions}
            offers += sp.offers_from_nodes(name, nodes, cluster.partitions(), gpu_of)
        return offers

    async def create_instance(
        self, host: Host, offer: InstanceOfferWithAvailability | None
    ) -> Provisioning:
        if offer is None or not offer.availability_zones:
            raise BackendError("a Slurm instance needs an offer naming its partition")
        cluster, partition = offer.region, offer.availability_zones[0]
        user = self._cluster(cluster).user
        wanted = host.request.get("availability_zones")
        if wanted and partition not in wanted:
            raise NoCapacityError(f"partition {partition} is not among {', '.join(wanted)}")
        token = None if host.agent_token else secrets.token_urlsafe(32)
        digest = hashlib.sha256((host.agent_token or token or "").encode()).hexdigest()
        agent = await asyncio.to_thread(self.agent)
        await self._must(cluster, deploy.upload_script(deploy.digest(agent), sc.BASE_DIR), agent)
        group = gr.group_of(host.request)
        if group is not None:
            return await self._join(host, offer, group, digest, token)
        job_id = await self._existing_job(cluster, host.instance_id, user, digest)
        if job_id is None:
            await self._must(
                cluster,
                sc.prepare_script(host.instance_id, digest),
                sc.batch_script(host.instance_id, self._cluster(cluster).docker),
            )
            job_id = await self._submit(cluster, self._job_request(host, offer, partition))
        remote = {
            "cluster": cluster,
            "partition": partition,
            "user": user,
            "job_id": job_id,
            "dir": sc.instance_dir(host.instance_id),
            "phase": PHASE_SUBMITTED,
        }
        return Provisioning(agent_url="", hostname="", remote=remote, agent_token=token)

    async def _join(
        self,
        host: Host,
        offer: InstanceOfferWithAvailability,
        group: gr.Group,
        digest: str,
        token: str | None,
    ) -> Provisioning:
        """Take a slot of the fleet's one allocation (submitting it when first): gr.py."""
        cluster, partition = offer.region, offer.availability_zones[0]
        req = self._job_request(host, offer, partition)
        script = gr.join_script(group, host.instance_id, digest, gr.sbatch_command(group, req))
        rc, out, err = await self._run(
            cluster, script, gr.batch_script(group, self._cluster(cluster).docker)
        )
        if rc != 0:
            text = (err or out).strip()
            if rc == 3 or any(marker in text for marker in _NO_CAPACITY):
                raise NoCapacityError(f"Slurm cluster {cluster}, partition {partition}: {text}")
            raise BackendError(f"joining the fleet's allocation failed on {cluster}: {text}")
        slot, job_id = gr.parse_join(out)
        remote = {
            "cluster": cluster,
            "partition": partition,
            "user": self._cluster(cluster).user,
            "job_id": job_id,
            "dir": gr.slot_dir(group.fleet_id, slot),
            "group": group.fleet_id,
            "slot": slot,
            "phase": PHASE_SUBMITTED,
        }
        return Provisioning(agent_url="", hostname="", remote=remote, agent_token=token)

    def _job_request(
        self, host: Host, offer: InstanceOfferWithAvailability, partition: str
    ) -> sc.JobRequest:
        """What Slurm is asked for: the least the job accepts, within the node's shape, so
        that several dstack jobs share a node when Slurm places them there; an instance made
        for a fleet (no job) asks for the whole shape."""
        res = offer.instance.resources
        least = host.request.get("resources") or {}
        return sc.JobRequest(
            instance_id=host.instance_id,
            partition=partition,
            cpus=min(res.cpus, least.get("cpus") or res.cpus),
            memory_mib=min(res.memory_mib, least.get("memory_mib") or res.memory_mib),
            gpus=min(len(res.gpus), least.get("gpus", len(res.gpus))),
            max_duration_s=host.request.get("max_duration"),
        )

    async def _existing_job(
        self, cluster: str, instance_id: str, user: str, digest: str
    ) -> str | None:
        """The job a crashed create already submitted, if it runs with this token; one with
        another token (the first create's token was never stored) cannot be talked to and is
        cancelled."""
        out = await self._must(cluster, sc.find_job_command(instance_id, user))
        ids = [line.strip() for line in out.splitlines() if line.strip()]
        if not ids:
            return None
        _, on_disk, _ = await self._run(
            cluster, f"cat {sc._home(sc.instance_dir(instance_id))}/token.sha256 2>/dev/null"
        )
        if on_disk.strip() == digest:
            return ids[0]
        await self._run(cluster, sc.cancel_command(ids, instance_id, user))
        return None

    async def _submit(self, cluster: str, req: sc.JobRequest) -> str:
        rc, out, err = await self._run(cluster, sc.sbatch_command(req))
        if rc != 0:
            text = (err or out).strip()
            if any(marker in text for marker in _NO_CAPACITY):
                raise NoCapacityError(f"Slurm refused the job on partition {req.partition}: {text}")
            raise BackendError(f"sbatch failed on cluster {cluster} (exit {rc}): {text}")
        return sp.parse_sbatch(out)

    # -- provisioning -------------------------------------------------------------------------

    async def _job(self, rc: dict[str, Any]) -> sp.JobState | None:
        code, out, err = await self._run(rc["cluster"], sc.job_state_command(str(rc["job_id"])))
        if code != 0:
            if "Invalid job id" in err:
                return None  # purged from slurmctld: it ended a while ago
            raise BackendError(f"squeue failed on cluster {rc['cluster']}: {err.strip()}")
        return sp.parse_squeue_job(out)

    async def advance(self, host: Host) -> Provisioning | None:
        rc = dict(host.remote)
        if not rc.get("job_id"):
            return None
        job = await self._job(rc)
        phase = sp.phase_of(job)
        if phase is sp.Phase.GONE:
            raise HostGone(
                sp.gone_message(rc["cluster"], str(rc["job_id"]), job), sp.job_reason(job)
            )
        assert job is not None
        if phase is sp.Phase.PENDING:
            reason = sp.pending_message(job)
            if rc.get("slurm_reason") == reason and rc.get("phase") == PHASE_PENDING:
                return None
            rc.update(phase=PHASE_PENDING, slurm_reason=reason)
            return Provisioning(agent_url="", hostname="", remote=rc, note=reason)
        if rc.get("phase") == PHASE_RUNNING:
            return None  # the agent's address is known; the server keeps polling it
        node, node_ip, port = job.node.split(",")[0], None, None
        if rc.get("group"):
            node, node_ip, port = await self._slot_state(rc)
        else:
            port = await self._agent_port(rc["cluster"], host.instance_id)
        if node_ip:
            rc["node_ip"] = node_ip
        if port is None or not node:
            if rc.get("phase") == PHASE_STARTING:
                return None
            rc.update(phase=PHASE_STARTING, node=node, slurm_reason=None)
            return Provisioning(agent_url="", hostname=node, remote=rc)
        rc.update(phase=PHASE_RUNNING, node=node, agent_port=port, slurm_reason=None)
        return Provisioning(agent_url=f"http://{node}:{port}", hostname=node, remote=rc)

    async def _agent_port(self, cluster: str, instance_id: str) -> int | None:
        _, out, _ = await self._run(cluster, sc.agent_state_command(instance_id))
        return _port_of(out)

    async def _slot_state(self, rc: dict[str, Any]) -> tuple[str, str | None, int | None]:
        """(node name, node address, agent port) of a group slot, as its agent wrote them."""
        _, out, _ = await self._run(rc["cluster"], gr.slot_state_command(rc["group"], rc["slot"]))
        node_line, _, state = out.partition("|\n")
        parts = node_line.split()
        return (parts[0] if parts else ""), (parts[1] if len(parts) > 1 else None), _port_of(state)

    async def ready(self, host: Host, info: dict[str, Any]) -> Ready:
        info = dict(info)
        rc = host.remote
        info["internal_ip"] = rc.get("node_ip") or rc.get("node") or info.get("internal_ip")
        name = rc.get("cluster") or "?"
        dk.host_info(self.clusters.get(name), name, rc.get("node") or "?", info)
        return Ready(host_info=info)

    def no_docker_regions(self) -> dict[str, str]:
        return {n: dk.not_configured(n) for n, c in self.clusters.items() if not c.docker}

    async def revive(self, host: Host) -> Provisioning | None:
        rc = host.remote
        if not rc.get("job_id"):
            return None
        job = await self._job(rc)
        if sp.phase_of(job) is sp.Phase.GONE:
            raise HostGone(
                sp.gone_message(rc["cluster"], str(rc["job_id"]), job), sp.job_reason(job)
            )
        return None

    async def diagnose(self, host: Host) -> str:
        rc = host.remote
        if not rc.get("cluster"):
            return ""
        parts = []
        if rc.get("slurm_reason"):
            parts.append(f"Slurm job {rc.get('job_id')} is {rc['slurm_reason']}")
        _, out, _ = await self._run(rc["cluster"], sc.tail_command(host.instance_id))
        if out.strip():
            parts.append(out.strip())
        return "; ".join(parts)

    # -- termination and inventory ---------------------------------------------------------

    async def terminate(self, host: Host) -> str | None:
        """Graceful first: a running job's processes get SIGTERM (`scancel --signal=TERM
        --full`, the batch script and every process under it), so the agent and what is left
        of a job end on their own and the Slurm job ends COMPLETED, not CANCELLED; whatever is
        still listed after `stop_grace` seconds (and a job still pending) is `scancel`ed."""
        rc = host.remote
        cluster = rc.get("cluster")
        if not cluster:
            return None  # never submitted
        await self.relays.drop(host.instance_id)
        user = rc.get("user") or self._cluster(cluster).user
        ids = [str(rc["job_id"])] if rc.get("job_id") else []
        # A group's job is the whole fleet's: found by id (a newer group may reuse the name).
        probe = (
            gr.live_job_command(ids[0])
            if rc.get("group") and ids
            else sc.find_job_command(host.instance_id, user)
        )
        if ids and rc.get("phase") in (PHASE_STARTING, PHASE_RUNNING):
            await self._run(cluster, sc.signal_command(ids, "TERM"))
            await self._wait_gone(cluster, probe, self.stop_grace)
        if await self._wait_gone(cluster, probe, 0):
            await self._run(cluster, sc.cancel_command(ids, host.instance_id, user))
            listed = await self._wait_gone(cluster, probe, CANCEL_WAIT_S)
            if listed:
                raise BackendError(f"Slurm still lists job(s) {listed} after scancel")
        if rc.get("group") and rc.get("slot") is not None:
            await self._run(cluster, gr.leave_command(rc["group"], rc["slot"], host.instance_id))
        await self._run(cluster, sc.remove_dir_command(host.instance_id))
        return None

    async def _wait_gone(self, cluster: str, probe: str, within: float) -> str:
        """Runs `probe` (an `squeue` printing job ids) until it lists nothing or `within`
        seconds passed; returns the ids still listed ("" when gone)."""
        waited = 0.0
        while True:
            out = await self._must(cluster, probe)
            if not out.strip() or waited >= within:
                return " ".join(out.split())
            await self.sleep(0.5)
            waited += 0.5

    async def inventory(self) -> list[InventoryItem]:
        items = []
        for name, cluster in self.clusters.items():
            out = await self._must(name, sc.user_jobs_command(cluster.user))
            for job_id, job_name in sp.parse_squeue_user(out):
                instance_id = sp.instance_of_job(job_name)
                if job_name.startswith(gr.GROUP_PREFIX):
                    # A fleet's allocation: its instances end it (listed, never swept).
                    what = f"Slurm job {job_id} ({job_name}) on cluster {name}"
                    items.append(InventoryItem(instance_id=None, description=what))
                    continue
                if instance_id is None:
                    continue  # the user's own jobs: never ours to sweep
                items.append(
                    InventoryItem(
                        instance_id=instance_id,
                        description=f"Slurm job {job_id} ({job_name}) on cluster {name}",
                        handle={"cluster": name, "job_id": job_id, "instance_id": instance_id},
                    )
                )
        return items

    async def terminate_orphan(self, item: InventoryItem) -> None:
        h = item.handle
        user = self._cluster(h["cluster"]).user
        await self._run(h["cluster"], sc.cancel_command([h["job_id"]], h["instance_id"], user))

    # -- transport: through the login node -------------------------------------------------

    def _where(self, host: Host) -> tuple[str, str, int]:
        rc = host.remote
        if not rc.get("cluster") or not rc.get("node") or not rc.get("agent_port"):
            raise BackendError(f"no agent address is recorded for {host.name} yet")
        return rc["cluster"], rc["node"], int(rc["agent_port"])

    def agent_transport(self, host: Host) -> httpx.AsyncBaseTransport | None:
        cluster, node, port = self._where(host)

        async def local_port() -> int:
            return await self.login.forward(cluster, node, port)

        return TunnelTransport(local_port)

    async def open_stream(self, host: Host, port: int) -> Stream:
        """A stream to `port` on the node's loopback: a direct-tcpip channel from the login
        node to the agent, turned into a relay by `CONNECT`."""
        cluster, node, agent_port = self._where(host)
        reader, writer = await self.login.open_stream(cluster, node, agent_port)
        return await connect_through_agent(reader, writer, port, host.agent_token or "")

    async def upstream(self, host: Host, port: int) -> tuple[str, int] | None:
        try:
            self._where(host)
        except BackendError:
            return None
        return await self.relays.listen(host, port)

    def host_access(self, host: Host) -> dict[str, Any]:
        """The node as the host and the login node as the ProxyJump, in the reference's
        `ssh_proxy` shape (the user's `ssh <run>` itself goes through the server's relay)."""
        rc = host.remote
        cluster = self.clusters.get(rc.get("cluster") or "")
        if cluster is None:
            return super().host_access(host)
        return {
            "hostname": rc.get("node") or "",
            "username": cluster.user,
            "ssh_port": 22,
            "ssh_proxy": {
                "hostname": cluster.hostname,
                "port": cluster.port,
                "username": cluster.user,
            },
        }

    def host_label(self, host: Host) -> str:
        rc = host.remote
        where = rc.get("node") or f"job {rc.get('job_id')}"
        return f"{where} (Slurm cluster {rc.get('cluster')})" if rc.get("cluster") else host.name

    def _cluster(self, name: str) -> Any:
        try:
            return self.clusters[name]
        except KeyError:
            raise BackendError(f"cluster {name} is not in the backend's configuration") from None

    async def close(self) -> None:
        await self.relays.close()
        await self.login.close()


def _port_of(state: str) -> int | None:
    """The port in the agent's state file (None while it is not written yet)."""
    try:
        port = int(json.loads(state).get("port") or 0) if state.strip() else 0
    except (ValueError, AttributeError):
        return None  # being written
    return port or None
