"""`~/.ssh/config` and `~/.dstack/ssh/config` editing, the user's key, and the forward plan."""

from __future__ import annotations

import shutil
import socket
import stat
from pathlib import Path

import pytest

from dstack.cli import sshconfig
from dstack.cli.common import CLIError
from dstack.cli.tunnel import Forward, job_hosts, parse_override, plan_forwards
from dstack.models.runs import JobProvisioningData, JobRuntimeData

USER_FILE = """# my own settings
Host github.com
    User git
    IdentityFile ~/.ssh/gh

Host *
    ServerAliveInterval 60
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_include_is_prepended_once_and_removed_exactly(home: Path) -> None:
    target = home / ".dstack" / "ssh" / "config"
    added = sshconfig.add_include(USER_FILE)
    assert added.startswith(sshconfig.INCLUDE_MARKER + "\n" + f"Include {target}\n")
    assert added.endswith(USER_FILE)
    assert sshconfig.add_include(added) == added  # idempotent
    assert sshconfig.remove_include(added) == USER_FILE  # reversible, byte for byte
    assert sshconfig.remove_include(USER_FILE) == USER_FILE


def test_install_and_uninstall_on_disk(home: Path) -> None:
    path = home / ".ssh" / "config"
    path.parent.mkdir()
    path.write_text(USER_FILE)
    assert sshconfig.install_include() is True
    assert sshconfig.install_include() is False
    text = path.read_text()
    assert text.count("Include ") == 1 and text.endswith(USER_FILE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sshconfig.uninstall_include() is True
    assert path.read_text() == USER_FILE
    assert sshconfig.uninstall_include() is False


def test_install_creates_a_missing_file(home: Path) -> None:
    assert sshconfig.install_include() is True
    assert sshconfig.has_include((home / ".ssh" / "config").read_text())


def test_include_path_with_spaces_is_quoted(tmp_path: Path) -> None:
    line = sshconfig.include_line(tmp_path / "a b" / "config")
    assert line == f'Include "{tmp_path}/a b/config"'


def _host(alias: str, port: int = 2222) -> sshconfig.SSHHost:
    return sshconfig.SSHHost(alias, "127.0.0.1", port, "root", Path("/k/id_rsa"))


def test_blocks_replace_only_their_own_lines(home: Path) -> None:
    path = home / ".dstack" / "ssh" / "config"
    path.parent.mkdir(parents=True)
    path.write_text("# the user's note\n")
    sshconfig.write_hosts("run-a", [_host("run-a")])
    sshconfig.write_hosts("run-b", [_host("run-b", 3333)])
    sshconfig.write_hosts("run-a", [_host("run-a", 4444)])  # rewritten in place
    text = path.read_text()
    assert text.startswith("# the user's note\n")
    assert text.count("Host run-a\n") == 1 and "Port 4444" in text and "Port 2222" not in text
    assert "Port 3333" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sshconfig.forget("run-a")
    text = path.read_text()
    assert "run-a" not in text and "Host run-b" in text and text.startswith("# the user's note")
    sshconfig.forget("run-b")
    assert path.read_text() == "# the user's note\n"


def test_host_block_renders_jump_and_options() -> None:
    text = sshconfig.SSHHost("r", "127.0.0.1", 40000, "me", Path("/k/id"), "r-host").render()
    assert "Host r\n" in text and "HostName 127.0.0.1" in text and "Port 40000" in text
    assert "User me" in text and "IdentityFile /k/id" in text and "ProxyJump r-host" in text
    assert "StrictHostKeyChecking no" in text and "IdentitiesOnly yes" in text


def test_stopped_run_entry_fails_fast_with_a_message(home: Path) -> None:
    sshconfig.write_hosts("gone", [_host("gone")])
    sshconfig.mark_stopped("gone", "run gone is terminated; it no longer accepts SSH")
    text = (home / ".dstack" / "ssh" / "config").read_text()
    assert "ProxyCommand" in text and "run gone is terminated" in text
    assert "HostName" not in text
    sshconfig.mark_stopped("never-attached", "x")  # no block: nothing written
    assert "never-attached" not in (home / ".dstack" / "ssh" / "config").read_text()


def test_invalid_alias_rejected() -> None:
    with pytest.raises(ValueError):
        sshconfig.set_block("", "bad alias\nHost *", "x")


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_user_key_created_private_and_reused(home: Path) -> None:
    private, public = sshconfig.user_key()
    assert private == home / ".dstack" / "ssh" / "id_rsa"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    assert public.startswith("ssh-rsa ")
    assert sshconfig.user_key() == (private, public)
    private.chmod(0o644)  # loosened by someone: tightened again, never used loose
    sshconfig.user_key()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_missing_identity_is_an_error(home: Path) -> None:
    with pytest.raises(CLIError, match="does not exist"):
        sshconfig.user_key(str(home / "nope"))


# --- forwards ---------------------------------------------------------------------------------


def _busy() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_parse_override() -> None:
    assert parse_override("8080:80") == (8080, 80)
    assert parse_override("8080") == (8080, 8080)
    assert parse_override("*:80") == (None, 80)
    with pytest.raises(CLIError):
        parse_override("x:1")


def test_same_network_ports_are_direct_and_mappings_forwarded() -> None:
    specs = [{"port": 8501, "map_to_port": 8501}, {"port": 80, "map_to_port": None},
             {"port": 10500, "map_to_port": None}]  # fmt: skip
    plan = plan_forwards(specs, [], same_network=True)
    assert plan == [Forward(8501, 8501, direct=True), Forward(80, 80, direct=True)]


def test_busy_fixed_port_names_the_next_free_one() -> None:
    with _busy() as s:
        port = s.getsockname()[1]
        with pytest.raises(CLIError, match=f"port {port} is already in use. Use `-p \\d+:80`"):
            plan_forwards([{"port": 80, "map_to_port": port}], [], same_network=False)


def test_any_local_port_moves_to_the_next_free() -> None:
    with _busy() as s:
        port = s.getsockname()[1]
        (fwd,) = plan_forwards([{"port": port, "map_to_port": None}], [], same_network=False)
        assert fwd.remote_port == port and fwd.local_port > port and not fwd.direct


def test_override_must_name_an_exposed_port_and_held_forwards_are_reused() -> None:
    with pytest.raises(CLIError, match="Port 81 is not exposed"):
        plan_forwards([{"port": 80, "map_to_port": None}], ["9000:81"], same_network=False)
    with _busy() as s:
        port = s.getsockname()[1]
        plan = plan_forwards(
            [{"port": 80, "map_to_port": port}], [], same_network=False, held={port: 80}
        )
        assert plan == [Forward(port, 80, direct=True)]


def _jpd(backend: str, **kw) -> JobProvisioningData:
    return JobProvisioningData(
        backend=backend,
        instance_type={"name": "t", "resources": {"cpus": 1, "memory_mib": 1}},
        instance_id="i",
        **kw,
    )


def test_job_hosts_local_direct_and_remote_through_the_host() -> None:
    jrd = JobRuntimeData(ports={10022: 41000}, username="ubuntu", working_dir="/w")
    key = Path("/k/id")
    (local,), err = job_hosts("run", _jpd("local"), jrd, key)
    assert err is None and (local.hostname, local.port, local.user) == (
        "127.0.0.1",
        41000,
        "ubuntu",
    )
    hosts, _ = job_hosts(
        "run",
        _jpd("ssh", hostname="10.0.0.5", ssh_port=2201, username="admin",
             ssh_proxy={"hostname": "bastion", "port": 22, "username": "jump"}),
        jrd, key,
    )  # fmt: skip
    assert [h.alias for h in hosts] == ["run-jump-host", "run-host", "run"]
    assert hosts[1].proxy_jump == "run-jump-host" and hosts[1].hostname == "10.0.0.5"
    assert hosts[2].proxy_jump == "run-host" and hosts[2].port == 41000
    _, err = job_hosts("run", _jpd("local"), JobRuntimeData(), key)
    assert "no SSH server" in err
    # The agent's reason, when it gave one.
    _, err = job_hosts("run", _jpd("local"), JobRuntimeData(ssh_error="no keys here"), key)
    assert err == "no keys here"


def test_alias_of_other_jobs_is_the_job_name() -> None:
    from dstack.cli.attach_ssh import alias_for
    from dstack.models.runs import Job, JobSpec, Run, RunSpec

    def job(replica: int, num: int) -> Job:
        spec = JobSpec(job_name=f"train-{num}-{replica}", replica_num=replica, job_num=num)
        return Job(job_spec=spec, job_submissions=[])

    run = Run.model_construct(run_spec=RunSpec(run_name="train", configuration={"type": "task"}))
    assert alias_for(run, job(0, 0)) == "train"
    assert alias_for(run, job(0, 1)) == "train-1-0"
    assert alias_for(run, job(2, 0)) == "train-0-2"
