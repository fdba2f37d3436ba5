"""The pure parts of SSH fleets: host prerequisite checks, fleet plan diffs and host
resolution, multi-node placement, the fleet transition table, blocks and internal IPs."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from dstack.errors import ServerClientError
from dstack.server.backends.base import BackendError
from dstack.server.backends.ssh.backend import internal_ip as _internal_ip
from dstack.server.backends.ssh.backend import total_blocks
from dstack.server.backends.ssh.deploy import missing_prerequisites, parse_facts
from dstack.server.reconcilers.fleets import FleetView, decide
from dstack.server.scheduler import multinode
from dstack.server.scheduler.ranking import rank
from dstack.server.services.fleet_apply import _diff, parse_fleet, resolve_hosts

from .test_scheduler import inst, req

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
GOOD = "os=Linux\narch=x86_64\npython=3.11\ndisk_free_kib=10485760\nhome=/home/u\n"


def test_prerequisites_ok() -> None:
    assert missing_prerequisites(parse_facts(GOOD)) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("python=3.11", "python="), "python3: not found"),
        (("python=3.11", "python=3.6"), "python3: version 3.6"),
        (("arch=x86_64", "arch=mips"), "architecture: mips"),
        (("disk_free_kib=10485760", "disk_free_kib=1024"), "free disk: 1 MiB"),
    ],
)
def test_each_missing_prerequisite_is_named(change: tuple[str, str], named: str) -> None:
    missing = missing_prerequisites(parse_facts(GOOD.replace(*change)))
    assert len(missing) == 1 and missing[0].startswith(named), missing


def fleet(**ssh: object) -> dict:
    conf = {
        "type": "fleet",
        "name": "fl",
        "ssh_config": {"user": "u", "ssh_key": {"private": "k"}, "hosts": ["h1", "h2"], **ssh},
    }
    return {"configuration": conf}


def test_resolve_hosts_applies_defaults_and_overrides() -> None:
    hosts = resolve_hosts(
        parse_fleet(
            fleet(
                port=2200, hosts=["h1", {"hostname": "h2", "port": 22, "user": "ops", "blocks": 2}]
            )
        )
    )
    assert [(h["hostname"], h["port"], h["user"], h["blocks"]) for h in hosts] == [
        ("h1", 2200, "u", 1),
        ("h2", 22, "ops", 2),
    ]


@pytest.mark.parametrize(
    ("ssh", "message"),
    [
        ({"hosts": ["h1", "h1"]}, "listed more than once"),
        ({"user": None}, "No ssh user"),
        ({"ssh_key": None}, "No ssh key"),
    ],
)
def test_resolve_hosts_refuses_bad_input(ssh: dict, message: str) -> None:
    with pytest.raises(ServerClientError, match=message):
        resolve_hosts(parse_fleet(fleet(**ssh)))


def test_diff_in_place_only_for_added_or_removed_hosts() -> None:
    old = {"name": "fl", "ssh_config": {"user": "u", "hosts": [{"hostname": "a", "port": None}]}}
    added = {
        "name": "fl",
        "ssh_config": {
            "user": "u",
            "hosts": [{"hostname": "a", "port": None}, {"hostname": "b", "port": None}],
        },
    }
    assert _diff(old, old) == ("no_changes", [])
    assert _diff(old, added) == ("update", ["add host b"])
    assert _diff(added, old) == ("update", ["remove host b"])
    other_user = {**old, "ssh_config": {**old["ssh_config"], "user": "v"}}
    assert _diff(old, other_user)[0] == "recreate"
    assert _diff(old, {**old, "placement": "cluster"}) == ("recreate", ["placement changed"])


def test_fleet_transitions() -> None:
    assert decide(FleetView("active", 0), NOW).status is None
    assert decide(FleetView("terminating", 1), NOW).status is None
    d = decide(FleetView("terminating", 0), NOW)
    assert (d.status, d.deleted) == ("terminated", True)


def test_blocks_and_internal_ip() -> None:
    info = {"cpus": 4, "gpus": [{}, {}], "addresses": ["192.168.1.5", "10.9.0.7"]}
    assert total_blocks("auto", info) == 2
    assert total_blocks("auto", {"cpus": 4}) == 4
    assert total_blocks(2, info) == 2
    with pytest.raises(BackendError, match="does not divide"):
        total_blocks(3, info)
    rc = {"hostname": "h", "network": "10.9.0.0/16"}
    assert _internal_ip(rc, info) == "10.9.0.7"
    assert _internal_ip({**rc, "internal_ip": "10.1.1.1"}, info) == "10.1.1.1"


def test_multinode_all_or_nothing_on_one_cluster_fleet() -> None:
    pool = [inst("a1", fleet="a"), inst("b1", fleet="b"), inst("b2", fleet="b")]
    ranking = rank(req(multinode=True), pool, [])
    clusters = {"a-id", "b-id"}
    master = multinode.choose(ranking, 2, 0, clusters, None, set())
    assert master.candidate is not None and master.candidate.fleet_name == "b"
    worker = multinode.choose(ranking, 2, 1, clusters, "b-id", {master.candidate.instance_id})
    assert worker.candidate is not None
    assert worker.candidate.instance_id != master.candidate.instance_id
    assert multinode.choose(ranking, 2, 1, clusters, None, set()).queued  # waits for master
    none = multinode.choose(ranking, 2, 0, {"a-id"}, None, set())  # only `a` is a cluster
    assert none.candidate is None and not none.queued and "placement: cluster" in none.message
    busy = rank(req(multinode=True), [inst("b1", fleet="b"), inst("b2", fleet="b", busy=1)], [])
    assert multinode.choose(busy, 2, 0, clusters, None, set()).queued


def ssh_backend():  # noqa: ANN201
    from pathlib import Path

    from dstack.server.backends.ssh.backend import SSHBackend

    return SSHBackend(Path("/nonexistent"), decrypt=lambda v: f"plain-{v}")


def test_upstream_forwards_to_the_replica_port_and_hides_ssh_errors() -> None:
    import asyncio

    from dstack.server.backends.base import Host

    calls: list[tuple[str, str | None, int]] = []
    backend = ssh_backend()

    class FakePool:
        down = False

        async def forward(self, params, known_key, port):  # noqa: ANN001, ANN202
            if self.down:
                raise BackendError("host unreachable")
            calls.append((params.hostname, known_key, port))
            return 40000 + port

    backend.pool = FakePool()  # type: ignore[assignment]
    rc = {"hostname": "10.0.0.5", "port": 22, "user": "u", "host_key": "ssh-ed25519 AAA"}
    host = Host(instance_id="i1", project_id="p", name="f-0", remote=rc)
    assert asyncio.run(backend.upstream(host, 8001)) == ("127.0.0.1", 48001)
    assert calls == [("10.0.0.5", "ssh-ed25519 AAA", 8001)]
    backend.pool.down = True  # type: ignore[attr-defined]
    assert asyncio.run(backend.upstream(host, 8001)) is None
    no_host = Host(instance_id="i2", project_id="p", name="f-1", remote={})
    assert asyncio.run(backend.upstream(no_host, 8001)) is None


def test_job_reaches_an_ssh_host_as_the_fleet_does() -> None:
    """The job's provisioning data carries the host's SSH address, port and user (the CLI's
    ProxyJump to the job's sshd) and the fleet's proxy_jump as `ssh_proxy`; keys never."""
    import json

    from dstack.server.backends.base import Host
    from dstack.server.backends.local import LocalBackend

    backend = ssh_backend()

    def _host_access(host: Host) -> dict:
        return backend.host_access(host)

    rc = {
        "hostname": "10.0.0.5",
        "port": 2201,
        "user": "ops",
        "key_enc": "secret",
        "proxy": {"hostname": "bastion", "port": 2222, "user": "jump", "key_enc": "secret"},
    }
    ssh = Host(instance_id="i", project_id="p", name="f-0", hostname="10.0.0.5", remote=rc)
    assert _host_access(ssh) == {
        "hostname": "10.0.0.5",
        "username": "ops",
        "ssh_port": 2201,
        "ssh_proxy": {"hostname": "bastion", "port": 2222, "username": "jump"},
    }
    ssh.remote = {**rc, "port": None, "proxy": None}
    assert _host_access(ssh)["ssh_port"] == 22 and _host_access(ssh)["ssh_proxy"] is None
    local = Host(instance_id="l", project_id="p", name="local-0", hostname="127.0.0.1")
    from pathlib import Path

    lb = LocalBackend(Path("/nonexistent"), "main")
    assert lb.host_access(local) == {"hostname": "127.0.0.1", "username": "root", "ssh_port": 22}
    # The user knows an SSH host by the address the fleet lists, the local one as `local`.
    assert backend.host_label(ssh) == "10.0.0.5" and lb.host_label(local) == "local"
    assert backend.params(rc).private_keys == ("plain-secret",)
    assert json.loads(json.dumps(backend.host_access(ssh)))  # keys never in it
    assert "secret" not in json.dumps(backend.host_access(ssh))
