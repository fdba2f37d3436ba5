"""The Slurm backend against a fake login node: a tiny queue that answers the commands the
backend runs (`squeue`, `sbatch`, `scancel`, `cat`) the way Slurm 22.05 prints them. Also
the configuration's validation and redaction, and the CONNECT relay through a real agent."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from dstack.errors import ConfigurationError
from dstack.models.backends import SlurmBackendConfig
from dstack.models.instances import InstanceType, Resources
from dstack.models.offers import InstanceOfferWithAvailability
from dstack.models.server_config import ServerConfig
from dstack.models.validation import validate_model
from dstack.server.backends.base import BackendError, Host, HostGone, NoCapacityError
from dstack.server.backends.slurm.compute import SlurmBackend
from dstack.server.backends.slurm.login import read_keys
from dstack.server.backends.slurm.relay import connect_through_agent
from dstack.server.services import backend_configs

SINFO = "n1|cpu*|4|7800|(null)|idle\nn2|cpu*|4|7800|(null)|allocated\n"
CONFIG = {
    "type": "slurm",
    "clusters": [
        {
            "name": "hpc",
            "hostname": "login.example",
            "user": "alice",
            "private_key": {"content": "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n"},
            "cpu_partitions": ["cpu"],
        }
    ],
}


class FakeLogin:
    """The login node: every command is recorded; Slurm's queue is `jobs`."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.jobs: dict[str, dict[str, str]] = {}  # id -> name, state, reason, node
        self.files: dict[str, str] = {}
        self.next_id = 100
        self.sbatch_error: str | None = None
        self.purged: set[str] = set()
        self.ends_on_term = True  # the batch script (the agent) exits on SIGTERM

    async def run(self, cluster: str, command: str, stdin: Any = None) -> tuple[int, str, str]:
        assert cluster == "hpc"
        self.commands.append(command)
        if command.startswith("sinfo"):
            return 0, SINFO, ""
        if command.startswith("set -e; mkdir -p"):  # the agent upload
            return 0, "copied\n", ""
        if command.startswith("set -e; umask 077"):
            d = re.search(r"instances/([\w-]+)", command).group(1)  # type: ignore[union-attr]
            digest = re.search(r"printf '%s\\n' ([0-9a-f]{64})", command).group(1)  # type: ignore[union-attr]
            self.files[f"{d}/token.sha256"] = digest
            self.files[f"{d}/job.sh"] = stdin
            return 0, "prepared\n", ""
        if command.startswith("sbatch"):
            if self.sbatch_error:
                return 1, "", self.sbatch_error
            name = re.search(r"--job-name=(\S+)", command).group(1)  # type: ignore[union-attr]
            job_id = str(self.next_id)
            self.next_id += 1
            self.jobs[job_id] = {"name": name, "state": "PENDING", "reason": "Priority", "node": ""}
            return 0, f"{job_id}\n", ""
        if m := re.match(r"squeue -h --name=(\S+) -u alice -o %i", command):
            live = [i for i, j in self.jobs.items() if j["name"] == m.group(1) and _live(j)]
            return 0, "".join(f"{i}\n" for i in live), ""
        if m := re.match(r"squeue -h --jobs=(\d+) --states=all", command):
            if m.group(1) in self.purged or m.group(1) not in self.jobs:
                return 1, "", "slurm_load_jobs error: Invalid job id specified\n"
            j = self.jobs[m.group(1)]
            return 0, f"{j['state']}|{j['reason']}|{j['node']}\n", ""
        if command.startswith("squeue -h -u alice"):
            return 0, "".join(f"{i}|{j['name']}\n" for i, j in self.jobs.items() if _live(j)), ""
        if m := re.match(r"scancel --signal=TERM --full ([\d ]+) 2>", command):
            for i in m.group(1).split():
                if self.ends_on_term and self.jobs[i]["state"] == "RUNNING":
                    self.jobs[i]["state"] = "COMPLETED"
            return 0, "", ""
        if command.startswith("scancel") or " scancel " in command:
            for job_id in re.findall(r"scancel ([\d ]+?) 2>", command):
                for i in job_id.split():
                    self.jobs[i]["state"] = "CANCELLED"
            if m := re.search(r"--name=(\S+)", command):
                for j in self.jobs.values():
                    if j["name"] == m.group(1) and _live(j):
                        j["state"] = "CANCELLED"
            return 0, "", ""
        if m := re.match(r'cat "\$HOME"/\.dstack-slurm/instances/([\w-]+)/(\S+?)( 2>|$)', command):
            return 0, self.files.get(f"{m.group(1)}/{m.group(2)}", ""), ""
        if command.startswith("rm -rf"):
            d = re.search(r"instances/([\w-]+)", command).group(1)  # type: ignore[union-attr]
            self.files = {k: v for k, v in self.files.items() if not k.startswith(d + "/")}
            return 0, "", ""
        if command.startswith("tail"):
            return 0, "node=n1 job=100\n", ""
        raise AssertionError(f"unexpected command {command!r}")

    async def close(self) -> None:
        return None


def _live(job: dict[str, str]) -> bool:
    return job["state"] in ("PENDING", "RUNNING", "COMPLETING")


def _backend(login: FakeLogin) -> SlurmBackend:
    async def no_sleep(_s: float) -> None:
        return None

    config = SlurmBackendConfig.model_validate(CONFIG)
    return SlurmBackend("main", config, login=login, agent=lambda: b"zipapp", sleep=no_sleep)


def _offer() -> InstanceOfferWithAvailability:
    return InstanceOfferWithAvailability(
        backend="slurm",
        instance=InstanceType(name="cpu/4cpu-7800MB", resources=Resources(cpus=4, memory_mib=7800)),
        region="hpc",
        availability_zones=["cpu"],
        price=0.0,
    )


def _host(**kw: Any) -> Host:
    return Host(instance_id="inst-1", project_id="p", name="inst-1", **kw)


def test_offers_come_from_sinfo() -> None:
    login = FakeLogin()
    (offer,) = asyncio.run(_backend(login).offers(_requirements()))
    assert offer.instance.name == "cpu/4cpu-7800MB" and offer.region == "hpc"
    assert offer.availability.value == "available"


def _requirements() -> Any:
    from dstack.server.backends.base import OfferRequirements

    return OfferRequirements()


def test_create_advance_terminate() -> None:
    login = FakeLogin()
    backend = _backend(login)
    host = _host(request={"max_duration": 600})
    p = asyncio.run(backend.create_instance(host, _offer()))
    assert p.agent_url == "" and p.agent_token
    assert p.remote == {
        "cluster": "hpc",
        "partition": "cpu",
        "user": "alice",
        "job_id": "100",
        "dir": ".dstack-slurm/instances/inst-1",
        "phase": "submitted",
    }
    sbatch = next(c for c in login.commands if c.startswith("sbatch"))
    assert "--cpus-per-task=4" in sbatch and "--mem=7800M" in sbatch and "--time=15" in sbatch
    # The node holds only the token's hash.
    assert login.files["inst-1/token.sha256"] == hashlib.sha256(p.agent_token.encode()).hexdigest()
    assert "agent.pyz" in login.files["inst-1/job.sh"]

    # A repeated create (after a crash, the token stored) finds the job: no second sbatch.
    host.agent_token, host.remote = p.agent_token, p.remote
    again = asyncio.run(backend.create_instance(host, _offer()))
    assert again.remote["job_id"] == "100" and again.agent_token is None
    assert sum(c.startswith("sbatch") for c in login.commands) == 1

    # Pending: Slurm's reason is kept, once.
    p1 = asyncio.run(backend.advance(host))
    assert p1 is not None and p1.remote["slurm_reason"] == "pending in Slurm (Priority)"
    host.remote = p1.remote
    assert asyncio.run(backend.advance(host)) is None
    assert "pending in Slurm (Priority)" in asyncio.run(backend.diagnose(host))

    # Running, the agent not up yet: the node is known, no URL.
    login.jobs["100"].update(state="RUNNING", reason="None", node="n1")
    p2 = asyncio.run(backend.advance(host))
    assert p2 is not None and p2.agent_url == "" and p2.remote["node"] == "n1"
    host.remote = p2.remote
    assert asyncio.run(backend.advance(host)) is None

    # The agent wrote its port: the URL is the node's.
    login.files["inst-1/state/agent.json"] = json.dumps({"pid": 7, "port": 41234})
    p3 = asyncio.run(backend.advance(host))
    assert p3 is not None and p3.agent_url == "http://n1:41234" and p3.hostname == "n1"
    assert p3.remote["phase"] == "running" and p3.remote["agent_port"] == 41234
    host.remote = p3.remote
    assert backend.host_access(host) == {
        "hostname": "n1",
        "username": "alice",
        "ssh_port": 22,
        "ssh_proxy": {"hostname": "login.example", "port": 22, "username": "alice"},
    }
    assert asyncio.run(backend.revive(host)) is None  # still running

    (item,) = asyncio.run(backend.inventory())
    assert item.instance_id == "inst-1" and item.handle["job_id"] == "100"

    assert asyncio.run(backend.terminate(host)) is None
    assert login.jobs["100"]["state"] == "COMPLETED"  # the agent ended on SIGTERM
    assert not [k for k in login.files if k.startswith("inst-1/")]
    assert asyncio.run(backend.terminate(host)) is None  # idempotent
    assert asyncio.run(backend.inventory()) == []


def test_a_repeated_create_without_the_token_replaces_the_job() -> None:
    """The first create's token was never stored: its agent cannot be talked to."""
    login = FakeLogin()
    backend = _backend(login)
    asyncio.run(backend.create_instance(_host(), _offer()))
    p = asyncio.run(backend.create_instance(_host(), _offer()))
    assert login.jobs["100"]["state"] == "CANCELLED" and p.remote["job_id"] == "101"


@pytest.mark.parametrize(
    ("state", "reason", "words"),
    [
        ("NODE_FAIL", "NodeDown", "the node failed"),
        ("PREEMPTED", "None", "preempted"),
        ("TIMEOUT", "TimeLimit", "time limit"),
        ("CANCELLED", "None", "cancelled outside dstack"),
    ],
)
def test_a_job_that_ended_is_host_gone(state: str, reason: str, words: str) -> None:
    login = FakeLogin()
    backend = _backend(login)
    host = _host()
    host.remote = asyncio.run(backend.create_instance(host, _offer())).remote or {}
    login.jobs["100"].update(state=state, reason=reason, node="n1")
    with pytest.raises(HostGone, match=words):
        asyncio.run(backend.advance(host))
    with pytest.raises(HostGone, match=words):
        asyncio.run(backend.revive(host))
    login.purged.add("100")
    with pytest.raises(HostGone, match="no longer known to Slurm"):
        asyncio.run(backend.revive(host))


def test_sbatch_refusals() -> None:
    login = FakeLogin()
    backend = _backend(login)
    login.sbatch_error = (
        "sbatch: error: Batch job submission failed: Requested node configuration is not available"
    )
    with pytest.raises(NoCapacityError, match="partition cpu"):
        asyncio.run(backend.create_instance(_host(), _offer()))
    login.sbatch_error = "sbatch: error: slurm_persist_conn_open_without_init: failed"
    with pytest.raises(BackendError, match="sbatch failed"):
        asyncio.run(backend.create_instance(_host(), _offer()))
    # A run's availability_zones only narrows: a partition outside them is no capacity.
    with pytest.raises(NoCapacityError):
        asyncio.run(
            backend.create_instance(_host(request={"availability_zones": ["gpu"]}), _offer())
        )


# -- configuration ----------------------------------------------------------------------------


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigurationError) as info:
        validate_model(ServerConfig, {"projects": [{"name": "main", "backends": [data]}]})
    return str(info.value)


def test_configuration_errors_name_the_field() -> None:
    both = json.loads(json.dumps(CONFIG))
    both["clusters"][0]["private_key"]["path"] = "/k"
    assert "exactly one of private_key.path" in _error(both)
    bad = json.loads(json.dumps(CONFIG))
    bad["clusters"][0]["cpu_partitions"] = ["cpu; rm"]
    assert _error(bad).startswith("projects[0].backends[0].clusters[0].cpu_partitions")
    bad = json.loads(json.dumps(CONFIG))
    bad["clusters"].append(dict(bad["clusters"][0]))
    assert "duplicate cluster name(s): hpc" in _error(bad)
    bad = json.loads(json.dumps(CONFIG))
    bad["clusters"][0]["host_key"] = "not a key"
    assert "host_key" in _error(bad)
    assert "clusters" in _error({"type": "slurm", "clusters": []})


def test_the_private_key_is_a_secret() -> None:
    conf = SlurmBackendConfig.model_validate(CONFIG)
    config, secrets = backend_configs._split(conf)
    assert "secret" not in config and json.loads(config)["clusters"][0]["private_key"] == {
        "content": "***"
    }
    back = SlurmBackendConfig.join_secrets(json.loads(config), json.loads(secrets))
    assert SlurmBackendConfig.model_validate(back) == conf


def test_a_key_path_is_read_at_start(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("KEY")
    data = json.loads(json.dumps(CONFIG))
    data["clusters"][0]["private_key"] = {"path": str(key)}
    assert read_keys(SlurmBackendConfig.model_validate(data)) == {"hpc": "KEY"}
    data["clusters"][0]["private_key"] = {"path": str(tmp_path / "missing")}
    with pytest.raises(BackendError, match="cluster hpc: cannot read private_key.path"):
        read_keys(SlurmBackendConfig.model_validate(data))


# -- the CONNECT relay through a real agent ---------------------------------------------------


def test_connect_through_the_agent_reaches_the_nodes_loopback(tmp_path: Path) -> None:
    from dstack.agent.server import AgentHTTPServer, token_hash

    agent = AgentHTTPServer(("127.0.0.1", 0), tmp_path, token_hash("tok"))
    threading.Thread(target=agent.serve_forever, daemon=True).start()

    async def scenario() -> None:
        async def echo(r: Any, w: Any) -> None:
            w.write(b"echo:" + await r.read(5))
            await w.drain()
            w.close()

        target = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = target.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", agent.server_address[1])
        r, w = await connect_through_agent(r, w, port, "tok")
        w.write(b"hello")
        assert await r.read() == b"echo:hello"
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", agent.server_address[1])
        with pytest.raises(BackendError, match="401"):
            await connect_through_agent(r, w, port, "wrong")
        target.close()

    try:
        asyncio.run(scenario())
    finally:
        agent.shutdown()
        agent.server_close()


def test_slurm_is_asked_for_the_least_the_job_accepts_within_the_node() -> None:
    """Several dstack jobs share a node when Slurm places them there: each asks for its own
    lower bounds, never more than the node has; a fleet's instance (no job) takes the node."""
    from dstack.server.services.host_request import _least

    least = _least(
        {
            "cpu": {"count": {"min": 1, "max": None}},
            "memory": {"min": 0.5, "max": None},
            "gpu": {"count": {"min": 0, "max": None}},
        }
    )
    assert least == {"cpus": 1, "memory_mib": 512, "gpus": 0}
    assert _least(None) == {}


@pytest.mark.parametrize("ends_on_term", [True, False])
def test_terminate_signals_term_first_and_scancels_after_the_grace(ends_on_term: bool) -> None:
    """A running job gets SIGTERM and ends COMPLETED on its own; one that ignores it is
    `scancel`ed once `stop_grace` has passed (the fake's sleep counts the time)."""
    login = FakeLogin()
    login.ends_on_term = ends_on_term
    backend = _backend(login)
    host = _host()
    p = asyncio.run(backend.create_instance(host, _offer()))
    host.agent_token, host.remote = p.agent_token, p.remote
    login.jobs["100"].update(state="RUNNING", reason="None", node="n1")
    login.files["inst-1/state/agent.json"] = json.dumps({"pid": 7, "port": 41234})
    p1 = asyncio.run(backend.advance(host))
    assert p1 is not None
    host.remote = p1.remote
    login.commands.clear()
    assert asyncio.run(backend.terminate(host)) is None
    assert login.commands[0] == "scancel --signal=TERM --full 100 2>/dev/null; true"
    hard = [c for c in login.commands if c.startswith("scancel 100")]
    polls = sum(c.startswith("squeue -h --name=") for c in login.commands)
    if ends_on_term:
        assert login.jobs["100"]["state"] == "COMPLETED" and not hard
    else:
        assert login.jobs["100"]["state"] == "CANCELLED" and hard
        assert polls >= backend.stop_grace / 0.5  # it waited the grace out first


def test_a_pending_job_is_cancelled_at_once() -> None:
    login = FakeLogin()
    backend = _backend(login)
    host = _host()
    p = asyncio.run(backend.create_instance(host, _offer()))
    host.agent_token, host.remote = p.agent_token, p.remote
    login.commands.clear()
    assert asyncio.run(backend.terminate(host)) is None
    assert not any("--signal" in c for c in login.commands)
    assert login.jobs["100"]["state"] == "CANCELLED"


def _docker_backend(docker: bool) -> SlurmBackend:
    config = SlurmBackendConfig.model_validate(
        {**CONFIG, "clusters": [{**CONFIG["clusters"][0], "docker": docker}]}
    )
    return SlurmBackend("main", config, login=FakeLogin(), agent=lambda: b"zipapp")


@pytest.mark.parametrize(
    ("configured", "engine", "docker", "note"),
    [
        (False, True, False, "set `docker: true` on the cluster"),
        (True, True, True, None),
        (True, False, False, "`docker info` does not answer for user alice on node n1"),
    ],
)
def test_docker_needs_the_cluster_flag_and_an_engine_that_answers(
    configured: bool, engine: bool, docker: bool, note: str | None
) -> None:
    """The cluster's `docker: true` says the nodes run images; the agent's `docker info` on
    the node has the last word (a job with `image` then fails naming the node and user)."""
    backend = _docker_backend(configured)
    host = _host(remote={"cluster": "hpc", "node": "n1", "agent_port": 1})
    info = asyncio.run(backend.ready(host, {"docker": engine})).host_info
    assert info["docker"] is docker
    assert (note in info["docker_note"]) if note else "docker_note" not in info
    regions = backend.no_docker_regions()
    assert (regions == {}) if configured else ("remove `image`" in regions["hpc"])
