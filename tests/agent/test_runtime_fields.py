"""`user`, `python` and `registry_auth` as a real agent carries them out."""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dstack.agent import jobuser, pyenv, registry
from dstack.agent.docker import run_argv
from dstack.agent.spec import BadRequest, validate_spec

from .helpers import AgentProcess

TEST_USER = "dstack-rt-user"


@pytest.fixture(scope="module")
def test_user() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    created = False
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", TEST_USER], check=True)
        created = True
    yield TEST_USER
    if created:
        subprocess.run(["userdel", "-r", TEST_USER], check=False, capture_output=True)


def test_job_runs_as_the_user_with_its_home(agent: AgentProcess, test_user: str) -> None:
    entry = pwd.getpwnam(test_user)
    from .test_api import make_tar

    code = make_tar({"data.txt": "payload\n"})
    agent.submit(
        "as-user",
        ["/bin/sh", "-c", "id -u; id -g; echo home=$HOME user=$USER; cat data.txt; touch new; pwd"],
        code=code,
        user=test_user,
    )
    state = agent.wait_finished("as-user")
    out = agent.output("as-user")
    assert state["status"] == "done", out
    lines = out.splitlines()
    assert lines[0] == str(entry.pw_uid) and lines[1] == str(entry.pw_gid)
    assert f"home={entry.pw_dir} user={test_user}" in out
    assert "payload" in out  # the code is the user's, and it may write there
    workdir = lines[-1]
    assert workdir.startswith(jobuser.USER_JOBS_BASE) and state["working_dir"] == workdir
    assert os.stat(Path(workdir) / "new").st_uid == entry.pw_uid
    agent.ok("POST", "/api/jobs/as-user/remove")
    assert not Path(workdir).exists()


def test_unknown_user_is_a_clear_failure(agent: AgentProcess) -> None:
    agent.submit("nouser", ["true"], user="no-such-user-xyz", host_label="host-a")
    state = agent.wait_finished("nouser")
    assert state["status"] == "failed" and state["termination_reason"] == "executor_error"
    assert state["termination_message"] == "user no-such-user-xyz does not exist on host-a"
    assert "does not exist on host-a" in agent.output("nouser", "stderr")


def test_python_version_is_the_jobs_python(agent: AgentProcess) -> None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if version not in pyenv.versions():
        pytest.skip(f"python{version} is not on PATH")
    agent.submit("py", ["python", "-c", "import sys; print(sys.version_info[:2])"], python=version)
    state = agent.wait_finished("py")
    assert state["status"] == "done"
    assert str(tuple(int(x) for x in version.split("."))) in agent.output("py")


def test_missing_python_names_the_host_and_what_it_has(agent: AgentProcess) -> None:
    agent.submit("nopy", ["python", "-V"], python="3.15", host_label="host-b")
    state = agent.wait_finished("nopy")
    assert state["status"] == "failed"
    message = state["termination_message"]
    assert message.startswith("python 3.15 is not on host-b (it has python ")
    if pyenv.uv_available():
        assert "uv has none installed" in message


def test_spec_validates_the_runtime_fields() -> None:
    base = {"id": "x", "commands": ["true"]}
    spec = validate_spec({**base, "user": "alice:staff", "python": "3.12", "privileged": True})
    assert (spec["user"], spec["python"], spec["privileged"]) == ("alice:staff", "3.12", True)
    for bad, field in (
        ({"user": "a b"}, "user"),
        ({"user": "-x"}, "user"),
        ({"python": "2.7"}, "python"),
        ({"privileged": "yes"}, "privileged"),
        ({"registry_auth": {"username": "u"}}, "registry_auth"),
    ):
        with pytest.raises(BadRequest, match=f"^{field}:"):
            validate_spec({**base, **bad})


def test_docker_argv_carries_user_and_privileged() -> None:
    spec = validate_spec(
        {"id": "d", "runtime": "docker", "image": "img", "user": "1000:1000", "privileged": True}
    )
    argv = run_argv(spec, "/code", has_nvidia=False)
    assert argv[argv.index("--user") + 1] == "1000:1000" and "--privileged" in argv
    assert argv.index("--privileged") < argv.index("img")


def test_registry_auth_config_never_keeps_a_credential_store() -> None:
    auth = {"username": "bob", "password": "s3cret"}
    base = {"credsStore": "desktop", "credHelpers": {"x": "y"}, "proxies": {"a": 1}}
    config = registry.client_config("ghcr.io/org/img:1", auth, base)
    assert "credsStore" not in config and "credHelpers" not in config
    assert config["proxies"] == {"a": 1}
    token = config["auths"]["ghcr.io"]["auth"]
    assert base64.b64decode(token).decode() == "bob:s3cret"
    assert registry.registry_of("ubuntu:22.04") == registry.DOCKER_HUB
    assert registry.registry_of("localhost:5000/x") == "localhost:5000"
    assert registry.registry_of("org/img") == registry.DOCKER_HUB


def _entry_archive(content: bytes | None) -> bytes:
    """An archive of one `files` entry: a file `x`, or a folder `x` with a file in it."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if content is None:
            info = tarfile.TarInfo("x")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
            content, name = b"inner\n", "x/inner.txt"
        else:
            name = "x"
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def test_files_follow_the_code_and_land_at_their_paths(agent: AgentProcess, tmp_path: Path) -> None:
    from .test_api import make_tar

    code = make_tar({"main.txt": "code\n"})
    one, two = _entry_archive(b"one\n"), _entry_archive(None)
    absolute = tmp_path / "abs" / "dir"
    spec = {
        "id": "files",
        "commands": ["/bin/sh", "-c", f"cat main.txt sub/one.txt {absolute}/inner.txt"],
        "files": [
            {"path": "sub/one.txt", "length": len(one)},
            {"path": str(absolute), "length": len(two)},
        ],
    }
    response = agent.start_job(spec, code + one + two)
    assert response.status_code == 200, response.text
    state = agent.wait_finished("files")
    assert state["status"] == "done", agent.output("files")
    assert agent.output("files") == "code\none\ninner\n"


def test_files_longer_than_the_body_are_refused(agent: AgentProcess) -> None:
    spec = {"id": "badfiles", "commands": ["true"], "files": [{"path": "a", "length": 99}]}
    response = agent.start_job(spec, b"12")
    assert response.status_code == 400 and response.json()["error"].startswith("files:")
    spec["files"] = [{"path": "~other/x", "length": 1}]
    response = agent.start_job(spec, b"1")
    assert response.status_code == 400 and "files[0].path" in response.json()["error"]


def test_ssh_sessions_of_a_user_job_run_as_that_user(
    agent: AgentProcess, test_user: str, tmp_path: Path
) -> None:
    from . import test_sshd

    if shutil.which("setpriv") is None or test_sshd.sshd.find_sshd() is None:
        pytest.skip("needs setpriv and sshd")
    key, pub = test_sshd._keypair(tmp_path)
    state = agent.submit("user-ssh", ["sleep", "60"], user=test_user, ssh_keys=[pub])
    port, login = state["ssh_port"], state["ssh_user"]
    assert port, state

    def session() -> Any:
        r = test_sshd._ssh(key, port, login, "id -un; echo $HOME; pwd")
        return r if r.returncode == 0 else None

    from .helpers import wait_for

    lines = wait_for(session, timeout=10, interval=0.2).stdout.splitlines()
    assert lines == [test_user, pwd.getpwnam(test_user).pw_dir, state["working_dir"]]
    config = (agent.home / "jobs" / "user-ssh" / "ssh" / "sshd_config").read_text()
    assert "AllowStreamLocalForwarding no" in config
