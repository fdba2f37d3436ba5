"""`user` and `python` on the process runtime of the local backend, through the real server,
agent and CLI: the job runs as that user with that Python, or the run fails (an unknown user)
or the plan refuses it (a Python the host lacks) saying why and where."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Server, write_config

E2E_USER = "dstack-e2e-user"
# A Python the host has only off PATH (pyenv keeps versions there); the server's PATH gets it.
EXTRA_PYTHON = "3.13"
RES = "resources:\n  cpu: 1..\n  memory: 0.5GB..\n  disk: 1GB..\n"


def _extra_python() -> str | None:
    candidate = Path.home() / ".pyenv" / "versions"
    for found in sorted(candidate.glob(f"{EXTRA_PYTHON}*/bin/python{EXTRA_PYTHON}")):
        return str(found)
    return None


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    bin_dir = tmp_path_factory.mktemp("pybin")
    extra = _extra_python()
    if extra:
        (bin_dir / f"python{EXTRA_PYTHON}").symlink_to(extra)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    server = Server(home=tmp_path_factory.mktemp("rt-home"), extra_env={"PATH": path})
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def e2e_user() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    created = False
    try:
        pwd.getpwnam(E2E_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", E2E_USER], check=True)
        created = True
    yield E2E_USER
    if created:
        subprocess.run(["userdel", "-r", E2E_USER], check=False, capture_output=True)


def test_task_runs_as_the_configured_user(rt: Server, project_dir: Path, e2e_user: str) -> None:
    write_config(
        project_dir,
        "u.dstack.yml",
        f"type: task\nname: as-user\nuser: {e2e_user}\ncommands:\n"
        "  - echo who=$(id -un) home=$HOME\n  - cat data.txt\n  - echo written > out.txt\n"
        "  - echo wd=$DSTACK_WORKING_DIR\n" + RES,
    )
    r = rt.cli("apply", "-f", "u.dstack.yml", "-y", cwd=project_dir, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    home = pwd.getpwnam(e2e_user).pw_dir
    assert f"who={e2e_user} home={home}" in r.stdout
    assert "payload-from-the-working-dir" in r.stdout  # the code is readable, and writable
    assert rt.run("as-user")["status"] == "done"


def test_unknown_user_fails_the_run_saying_so(rt: Server, project_dir: Path) -> None:
    write_config(
        project_dir,
        "nu.dstack.yml",
        "type: task\nname: no-user\nuser: nobody-here-xyz\ncommands:\n  - echo never\n" + RES,
    )
    r = rt.cli("apply", "-f", "nu.dstack.yml", "-y", cwd=project_dir, timeout=120)
    assert r.returncode != 0
    assert "never" not in r.stdout
    run = rt.run("no-user")
    assert run["status"] == "failed"
    sub = run["jobs"][0]["job_submissions"][-1]
    message = (sub.get("termination_message") or "") + (sub.get("status_message") or "")
    assert "user nobody-here-xyz does not exist on " in message + r.stdout + r.stderr


def test_task_gets_the_configured_python(rt: Server, project_dir: Path) -> None:
    if _extra_python() is None:
        pytest.skip(f"no python{EXTRA_PYTHON} under ~/.pyenv/versions")
    # The extra Python lives in root's home: only a root job reaches it (the next test).
    write_config(
        project_dir,
        "py.dstack.yml",
        f'type: task\nname: py-version\nuser: root\npython: "{EXTRA_PYTHON}"\ncommands:\n'
        "  - python --version\n  - python3 -c 'import sys; print(sys.version_info[:2])'\n" + RES,
    )
    r = rt.cli("apply", "-f", "py.dstack.yml", "-y", cwd=project_dir, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Python {EXTRA_PYTHON}." in r.stdout
    assert f"(3, {EXTRA_PYTHON.split('.')[1]})" in r.stdout


def test_a_python_the_job_user_cannot_reach_fails_saying_so(rt: Server, project_dir: Path) -> None:
    extra = _extra_python()
    if extra is None or os.geteuid() != 0 or os.stat(Path.home()).st_mode & 0o001:
        pytest.skip(f"needs root and python{EXTRA_PYTHON} in root's closed home")
    write_config(
        project_dir,
        "py2.dstack.yml",
        f'type: task\nname: py-job-user\npython: "{EXTRA_PYTHON}"\ncommands:\n'
        "  - python --version\n" + RES,
    )
    r = rt.cli("apply", "-f", "py2.dstack.yml", "-y", cwd=project_dir, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "which user dstack-job (the job's) cannot reach" in out, out


def test_python_the_host_lacks_is_refused_in_the_plan(rt: Server, project_dir: Path) -> None:
    write_config(
        project_dir,
        "nopy.dstack.yml",
        'type: task\nname: no-py\npython: "3.15"\ncommands:\n  - python --version\n' + RES,
    )
    r = rt.cli("apply", "-f", "nopy.dstack.yml", "-y", cwd=project_dir, timeout=120)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "`python: 3.15`: host " in out and " on PATH and no uv" in out, out
    assert rt.api("/api/project/main/runs/get", {"run_name": "no-py"}).status_code != 200


def test_files_are_copied_to_their_paths(
    rt: Server, project_dir: Path, request: pytest.FixtureRequest
) -> None:
    conf_dir = project_dir / "conf"
    (conf_dir / "assets" / "sub").mkdir(parents=True)
    (conf_dir / "assets" / "sub" / "a.txt").write_text("asset-a\n")
    (conf_dir / "settings.ini").write_text("setting=1\n")
    # Where the job's user may write (it runs as dstack-job, which cannot enter tmp_path).
    shared = Path(tempfile.mkdtemp(prefix="dstack-e2e-files-", dir="/var/tmp"))
    shared.chmod(0o777)
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    absolute = shared / "abs-target"
    write_config(
        conf_dir,
        "f.dstack.yml",
        "type: task\nname: with-files\nworking_dir: work\n"
        f"files:\n  - settings.ini:conf/settings.ini\n  - assets:{absolute}\n"
        "commands:\n  - cat conf/settings.ini\n  - pwd\n  - cat ../data.txt\n" + RES,
    )
    r = rt.cli("apply", "-f", "conf/f.dstack.yml", "-y", cwd=project_dir, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "setting=1" in r.stdout  # relative to the working dir, which it created
    assert "payload-from-the-working-dir" in r.stdout  # working_dir is inside the code
    assert (absolute / "sub" / "a.txt").read_text() == "asset-a\n"


def test_files_of_a_user_job_go_to_its_home(rt: Server, project_dir: Path, e2e_user: str) -> None:
    (project_dir / "token.txt").write_text("token-for-user\n")
    home = Path(pwd.getpwnam(e2e_user).pw_dir)
    write_config(
        project_dir,
        "uf.dstack.yml",
        f"type: task\nname: user-files\nuser: {e2e_user}\n"
        "files:\n  - token.txt:~/.dstack-e2e/token.txt\n"
        "commands:\n  - cat ~/.dstack-e2e/token.txt\n" + RES,
    )
    r = rt.cli("apply", "-f", "uf.dstack.yml", "-y", cwd=project_dir, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "token-for-user" in r.stdout
    placed = home / ".dstack-e2e" / "token.txt"
    assert placed.stat().st_uid == pwd.getpwnam(e2e_user).pw_uid  # copied as the user


def test_privileged_without_docker_is_refused_naming_the_host(
    rt: Server, project_dir: Path
) -> None:
    from dstack.agent.hostinfo import docker_available

    if docker_available():
        pytest.skip("this host has a Docker engine: the job would run in a container")
    write_config(
        project_dir,
        "pr.dstack.yml",
        "type: task\nname: priv\nprivileged: true\ncommands:\n  - echo never\n" + RES,
    )
    r = rt.cli("apply", "-f", "pr.dstack.yml", "-y", cwd=project_dir, timeout=60)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "`privileged` needs the docker runtime; the host has no Docker engine" in out, out
