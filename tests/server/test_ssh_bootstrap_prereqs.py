"""SSH host bootstrap: GPU driver and Docker facts, and the choice of supervisor (systemd unit or
restart loop). The systemd path cannot run on the test hosts (no systemd there): its unit text
and decision are checked here, and its shell is run against a fake `systemctl` that only
records its calls."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from dstack.server.backends.ssh import deploy
from dstack.server.backends.ssh.deploy import (
    choose_supervisor,
    docker_note,
    missing_prerequisites,
    parse_facts,
    unit_text,
)
from dstack.server.reconcilers.job_start import agent_job_spec

GOOD = (
    "os=Linux\narch=x86_64\npython=3.11\ndisk_free_kib=10485760\nhome=/home/u\n"
    "uid=1000\nuser=u\npython_path=/usr/bin/python3\ndocker=running\n"
    "nvidia_devices=\nnvidia_smi=absent\nsystemd=no\nsystemd_user=no\nlinger=no\n"
)


def facts(**changes: str):
    text = GOOD
    for key, value in changes.items():
        text = "\n".join(
            f"{key}={value}" if line.startswith(f"{key}=") else line for line in text.splitlines()
        )
    return parse_facts(text)


def test_new_facts_are_parsed() -> None:
    f = facts(nvidia_devices="/dev/nvidia0", nvidia_smi="ok", systemd="yes", linger="yes")
    assert (f.uid, f.user, f.python_path, f.docker) == ("1000", "u", "/usr/bin/python3", "running")
    assert (f.nvidia_devices, f.nvidia_smi, f.systemd, f.systemd_user, f.linger) == (
        "/dev/nvidia0",
        "ok",
        True,
        False,
        True,
    )
    assert missing_prerequisites(f) == []


def test_old_facts_text_still_parses() -> None:
    f = parse_facts("os=Linux\narch=x86_64\npython=3.11\ndisk_free_kib=10485760\nhome=/h\n")
    assert missing_prerequisites(f) == [] and choose_supervisor(f) == "loop"


@pytest.mark.parametrize(
    ("smi", "how"), [("fails", "does not run"), ("absent", "is not installed")]
)
def test_nvidia_devices_without_working_nvidia_smi_fail_bootstrap(smi: str, how: str) -> None:
    missing = missing_prerequisites(facts(nvidia_devices="/proc/driver/nvidia", nvidia_smi=smi))
    assert len(missing) == 1
    assert missing[0].startswith("GPU driver missing: NVIDIA devices found (/proc/driver/nvidia)")
    assert f"nvidia-smi {how}" in missing[0]


def test_no_gpus_need_no_driver_and_docker_never_fails_bootstrap() -> None:
    assert missing_prerequisites(facts(nvidia_smi="fails", docker="absent")) == []
    assert missing_prerequisites(facts(docker="not_running")) == []


def test_docker_note() -> None:
    assert docker_note(facts()) is None
    assert docker_note(facts(docker="absent")) == "docker is not installed"
    assert "`docker info` fails" in (docker_note(facts(docker="not_running")) or "")


@pytest.mark.parametrize(
    ("changes", "supervisor"),
    [
        ({}, "loop"),
        ({"uid": "0", "systemd": "yes"}, "systemd-system"),
        ({"uid": "0", "systemd": "no"}, "loop"),
        ({"systemd": "yes", "systemd_user": "yes", "linger": "yes"}, "systemd-user"),
        # Without lingering the user manager (and the agent) stops when the SSH session ends.
        ({"systemd": "yes", "systemd_user": "yes", "linger": "no"}, "loop"),
        ({"systemd": "yes", "systemd_user": "no", "linger": "yes"}, "loop"),
        ({"systemd": "no", "systemd_user": "yes", "linger": "yes"}, "loop"),
        # The unit needs python3's absolute path.
        ({"uid": "0", "systemd": "yes", "python_path": ""}, "loop"),
    ],
)
def test_supervisor_is_chosen_from_the_facts(changes: dict[str, str], supervisor: str) -> None:
    assert choose_supervisor(facts(**changes)) == supervisor


def test_unit_text() -> None:
    text = unit_text("systemd-user", "/home/u", "/usr/bin/python3")
    lines = text.splitlines()
    assert lines[0] == deploy.UNIT_MARKER
    assert "Restart=always" in lines and "RestartSec=1" in lines
    assert not any(line.startswith("EnvironmentFile=") for line in lines)
    assert "WantedBy=default.target" in lines
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start == (
        "ExecStart=/bin/sh -c 'exec /usr/bin/python3 /home/u/.dstack-agent/agent.pyz "
        '--home /home/u/.dstack-agent/state --port "$$(cat /home/u/.dstack-agent/port)" '
        "--token-sha256-file /home/u/.dstack-agent/token.sha256'"
    )
    assert "StandardOutput=append:/home/u/.dstack-agent/loop.log" in lines
    system = unit_text("systemd-system", "/root", "/usr/bin/python3")
    assert "WantedBy=multi-user.target" in system.splitlines()
    assert "DSTACK_AGENT_TOKEN" not in text  # the unit knows only the token's hash


def test_unit_text_passes_systemd_analyze(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    home = tmp_path / "home"
    d = home / deploy.AGENT_DIR
    d.mkdir(parents=True)
    (d / "token.sha256").write_text(deploy.digest(b"t") + "\n")
    unit = tmp_path / deploy.UNIT_NAME
    unit.write_text(unit_text("systemd-system", str(home), "/usr/bin/python3"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Offline verify may complain about the environment (no running manager, missing
    # dependencies); it must not report syntax problems in our unit.
    report = proc.stdout + proc.stderr
    assert deploy.UNIT_NAME + ":" not in report, report


def test_scripts_are_valid_sh() -> None:
    f = facts(uid="0", systemd="yes")
    for script in (
        deploy.CHECK_SCRIPT,
        deploy.start_script(),
        deploy.start_script("systemd-user", f),
        deploy.start_script("systemd-system", f),
        deploy.stop_script("ssh-ed25519 AAAA k"),
    ):
        subprocess.run(["sh", "-n", "-c", script], check=True)


def test_check_script_runs_here() -> None:
    proc = subprocess.run(
        ["sh", "-c", deploy.CHECK_SCRIPT], capture_output=True, text=True, timeout=60
    )
    f = parse_facts(proc.stdout)
    assert f.uid == str(os.getuid()) and f.python_path.startswith("/")
    assert f.docker in ("running", "not_running", "absent")
    assert f.nvidia_smi in ("ok", "fails", "absent")


def _fake_host(tmp_path: Path) -> tuple[dict[str, str], Path]:
    home = tmp_path / "home"
    (home / deploy.AGENT_DIR).mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *is-active*) exit 3;; esac\n')
    fake.chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, log


def test_systemd_user_start_and_stop_scripts_against_a_fake_systemctl(tmp_path: Path) -> None:
    env, log = _fake_host(tmp_path)
    home = Path(env["HOME"])
    f = facts(home=str(home), systemd="yes", systemd_user="yes", linger="yes")
    assert choose_supervisor(f) == "systemd-user"
    out = subprocess.run(
        ["sh", "-c", deploy.start_script("systemd-user", f)],
        input="secret-token\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    ).stdout
    assert "started" in out and "port=" in out
    unit = home / ".config/systemd/user" / deploy.UNIT_NAME
    assert unit.read_text() == unit_text("systemd-user", str(home), f.python_path)
    hashed = home / deploy.AGENT_DIR / "token.sha256"
    assert hashed.read_text() == deploy.digest(b"secret-token") + "\n"
    assert stat.S_IMODE(hashed.stat().st_mode) == 0o600
    tree = "".join(p.read_text(errors="replace") for p in home.rglob("*") if p.is_file())
    assert "secret-token" not in tree  # the token itself is on no file of the host
    calls = log.read_text().splitlines()
    assert calls == [
        f"--user is-active --quiet {deploy.UNIT_NAME}",
        "--user daemon-reload",
        f"--user enable {deploy.UNIT_NAME}",
        f"--user restart {deploy.UNIT_NAME}",
    ]

    log.unlink()
    subprocess.run(
        ["sh", "-c", deploy.stop_script(None)], env=env, timeout=30, check=True, capture_output=True
    )
    assert not unit.exists() and not (home / deploy.AGENT_DIR).exists()
    assert f"--user disable --now {deploy.UNIT_NAME}" in log.read_text().splitlines()


def test_stop_script_leaves_a_foreign_unit_alone(tmp_path: Path) -> None:
    env, log = _fake_host(tmp_path)
    unit = Path(env["HOME"]) / ".config/systemd/user" / deploy.UNIT_NAME
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    subprocess.run(
        ["sh", "-c", deploy.stop_script(None)], env=env, timeout=30, check=True, capture_output=True
    )
    assert unit.exists() and not log.exists()


def test_image_on_a_host_without_docker_names_the_host_and_the_fix() -> None:
    inst = SimpleNamespace(
        name="gpu-fleet-1",
        total_blocks=1,
        remote_connection='{"hostname": "10.0.0.7"}',
        backend="ssh",
    )
    job = SimpleNamespace(used_blocks=1)
    spec = SimpleNamespace(image_name="ubuntu:24.04")
    host_info = {"docker": False, "docker_note": "docker is not installed"}
    _, error = agent_job_spec(job, None, spec, inst, host_info)  # type: ignore[arg-type]
    assert error is not None
    assert "instance gpu-fleet-1 (host 10.0.0.7) has no Docker engine" in error
    assert "docker is not installed" in error
    assert "remove `image`" in error and "install and start Docker" in error
