"""The default job user of a root agent (the local backend's `dstack-job`), and directory
volumes of jobs that run as another user than the agent."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.agent import jobuser, volumes


def test_the_default_user_applies_to_process_jobs_without_user_on_a_root_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv(jobuser.JOB_USER_ENV, "dstack-job")
    assert jobuser.job_user({"runtime": "process"}) == "dstack-job"
    assert jobuser.job_user({"runtime": "process", "user": "root"}) == "root"
    assert jobuser.job_user({"runtime": "docker"}) is None
    monkeypatch.setenv(jobuser.JOB_USER_ENV, "")
    assert jobuser.job_user({"runtime": "process"}) is None
    monkeypatch.setenv(jobuser.JOB_USER_ENV, "dstack-job")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root: cannot switch, runs as itself
    assert jobuser.job_user({"runtime": "process"}) is None


def test_an_account_that_cannot_be_created_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no useradd
    with pytest.raises(jobuser.UserError, match="cannot create the job user dstack-nope-xyz on h1"):
        jobuser.ensure_account("dstack-nope-xyz", "h1")


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    own = tmp_path / "closed" / "vols"
    own.parent.mkdir(mode=0o700)
    shared_base = Path(tempfile.mkdtemp(dir="/var/tmp"))
    shared_base.chmod(0o755)
    shared = shared_base / "vols"
    monkeypatch.setenv(volumes.VOLUMES_DIR_ENV, str(own))
    monkeypatch.setenv(volumes.SHARED_VOLUMES_DIR_ENV, str(shared))
    yield own, shared
    shutil.rmtree(shared_base, ignore_errors=True)


def test_a_directory_volume_of_another_user_lives_where_it_can_reach(
    roots: tuple[Path, Path], tmp_path: Path
) -> None:
    own, shared = roots
    nobody = jobuser.resolve("nobody", "h1")
    vol = {"kind": "directory", "volume_id": "v1", "name": "data", "path": "/x"}
    [bind] = volumes.prepare([vol], tmp_path, nobody)
    source = Path(bind["source"])
    assert source == shared / "v1" and source.stat().st_uid == nobody["uid"]
    assert shared.stat().st_mode & 0o777 == 0o711
    # a root job later uses the same data, where it was created, and writes to it
    assert volumes.prepare([vol], tmp_path, None)[0]["source"] == str(source)
    (source / "sub").mkdir()
    (source / "sub" / "f").write_text("x")
    (source / "link").symlink_to("/etc/hostname")
    os.chown(source, 0, 0)
    volumes.prepare([vol], tmp_path, nobody)  # the next job of the user gets it all
    assert (source / "sub" / "f").stat().st_uid == nobody["uid"] == source.stat().st_uid
    assert os.lstat(source / "link").st_uid == nobody["uid"]
    assert Path("/etc/hostname").stat().st_uid == 0  # the link was not followed
    assert volumes.delete_directory("v1") and not source.exists()


def test_a_volume_in_a_closed_home_is_refused_for_another_user(
    roots: tuple[Path, Path], tmp_path: Path
) -> None:
    own, _ = roots
    (own / "v2").mkdir(parents=True)
    nobody = jobuser.resolve("nobody", "h1")
    vol = {"kind": "directory", "volume_id": "v2", "name": "data", "path": "/x"}
    with pytest.raises(volumes.VolumeError, match="which user nobody cannot reach"):
        volumes.prepare([vol], tmp_path, nobody)
    assert volumes.prepare([vol], tmp_path, None)[0]["source"] == str(own / "v2")
