"""The agent's mount contract (agent/volumes.py): typed volume entries, docker bind mounts,
and the process runtime's symlink + env var, against a real agent running real jobs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dstack.agent.docker import run_argv
from dstack.agent.spec import BadRequest, validate_spec
from dstack.agent.volumes import docker_args, env_name

from .helpers import AgentProcess


@pytest.fixture
def vagent(tmp_path: Path) -> Iterator[AgentProcess]:
    env = {"DSTACK_AGENT_VOLUMES_DIR": str(tmp_path / "vols")}
    process = AgentProcess(tmp_path / "home").start(env_extra=env)
    try:
        yield process
    finally:
        process.cleanup_jobs()
        process.kill()


def spec(volumes: list[Any]) -> dict[str, Any]:
    return {"id": "j", "commands": ["true"], "volumes": volumes}


def test_typed_entries_and_the_old_shape_are_accepted() -> None:
    got = validate_spec(
        spec(
            [
                {"kind": "network", "name": "data", "device": "/dev/xvdf", "path": "/data"},
                {"kind": "directory", "volume_id": "v-1", "name": "ckpt", "path": "/ckpt"},
                {"kind": "instance", "instance_path": "/srv", "path": "/srv", "read_only": True},
                {"host": "/a", "container": "/b"},
            ]
        )
    )["volumes"]
    assert got[0] == {
        "kind": "network", "name": "data", "device": "/dev/xvdf", "path": "/data",
        "read_only": False, "device_aliases": [],
    }  # fmt: skip
    assert got[1]["volume_id"] == "v-1"
    assert got[2]["read_only"] is True and got[2]["optional"] is False
    assert got[3] == {
        "kind": "instance", "instance_path": "/a", "path": "/b", "optional": False,
        "read_only": False,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"kind": "network", "name": "d", "device": "xvdf", "path": "/d"}, "volumes[0].device"),
        ({"kind": "directory", "volume_id": "../x", "name": "d", "path": "/d"}, "volume_id"),
        ({"kind": "instance", "instance_path": "/a", "path": "rel"}, "volumes[0].path"),
        ({"kind": "instance", "instance_path": "/a/../b", "path": "/b"}, "instance_path"),
        ({"kind": "nfs", "name": "d", "path": "/d"}, "volumes[0].kind"),
        ({"host": "/a"}, "volumes[0].path"),
    ],
)
def test_bad_entries_name_the_field(entry: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest, match=field.replace("[", r"\[").replace("]", r"\]")):
        validate_spec(spec([entry]))


def test_docker_bind_mounts_with_ro() -> None:
    binds = [
        {"source": "/h/vols/v1", "path": "/ckpt", "read_only": False, "name": "ckpt"},
        {"source": "/srv", "path": "/data", "read_only": True, "name": None},
    ]
    assert docker_args(binds) == ["-v", "/h/vols/v1:/ckpt", "-v", "/srv:/data:ro"]
    argv = run_argv({"id": "j", "image": "i", "commands": []}, "/c", False, None, binds)
    assert "/srv:/data:ro" in argv
    assert env_name("my-ckpt.0") == "DSTACK_VOLUME_MY_CKPT_0_PATH"


def test_directory_volume_outlives_the_job_and_a_second_job_reads_it(
    vagent: AgentProcess, tmp_path: Path
) -> None:
    link = tmp_path / "ckpt"
    entry = {"kind": "directory", "volume_id": "vol-1", "name": "ckpt", "path": str(link)}
    vagent.shell("w", f'echo step-7 > {link}/state && echo "$DSTACK_VOLUME_CKPT_PATH"',
                 volumes=[entry])  # fmt: skip
    assert vagent.wait_finished("w")["status"] == "done", vagent.output("w")
    data = tmp_path / "vols" / "vol-1"
    assert (data / "state").read_text() == "step-7\n"
    assert vagent.output("w").strip() == str(data)
    assert not link.exists() and not link.is_symlink()  # the link goes with the job
    vagent.shell("r", f"cat {link}/state", volumes=[entry])
    assert vagent.wait_finished("r")["status"] == "done"
    assert vagent.output("r").strip() == "step-7"


def test_process_runtime_refuses_a_path_it_cannot_link(
    vagent: AgentProcess, tmp_path: Path
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    entry = {"kind": "directory", "volume_id": "vol-2", "name": "d", "path": str(taken)}
    vagent.shell("t", "true", volumes=[entry])
    state = vagent.wait_finished("t")
    assert state["termination_reason"] == "volume_error"
    assert "already exists" in state["termination_message"]
    assert "DSTACK_VOLUME_D_PATH" in state["termination_message"]


def test_instance_volumes_optional_skipped_required_fails(
    vagent: AgentProcess, tmp_path: Path
) -> None:
    src = tmp_path / "host-data"
    src.mkdir()
    (src / "f").write_text("hi")
    ok = [
        {"kind": "instance", "instance_path": str(src), "path": str(tmp_path / "in")},
        {"kind": "instance", "instance_path": "/nonexistent-x", "path": str(tmp_path / "o"),
         "optional": True},
    ]  # fmt: skip
    vagent.shell("i", f"cat {tmp_path / 'in'}/f", volumes=ok)
    assert vagent.wait_finished("i")["status"] == "done"
    assert vagent.output("i").strip() == "hi"
    missing = [{"kind": "instance", "instance_path": "/nonexistent-x", "path": "/x"}]
    vagent.shell("m", "true", volumes=missing)
    state = vagent.wait_finished("m")
    assert state["termination_reason"] == "volume_error"
    assert "/nonexistent-x does not exist" in state["termination_message"]


def test_network_volume_whose_device_is_absent_fails_the_job(vagent: AgentProcess) -> None:
    entry = {"kind": "network", "name": "data", "device": "/dev/nonexistent-xvdz", "path": "/d"}
    vagent.shell("n", "true", volumes=[entry])
    state = vagent.wait_finished("n", timeout=30)  # it waits a while for the device to appear
    assert state["termination_reason"] == "volume_error"
    assert (
        "device /dev/nonexistent-xvdz of volume data is not present"
        in (state["termination_message"])
    )


def test_delete_volume_dir_refused_while_mounted(vagent: AgentProcess, tmp_path: Path) -> None:
    entry = {"kind": "directory", "volume_id": "vol-3", "name": "d", "path": str(tmp_path / "d")}
    vagent.shell("s", "echo up; sleep 30", volumes=[entry])
    vagent.wait_output("s", "up")
    busy = vagent.post("/api/volumes/vol-3/delete", {})
    assert busy.status_code == 409 and "in use by job s" in busy.json()["error"]
    vagent.post("/api/jobs/s/stop", {"abort": True})
    vagent.wait_finished("s")
    assert vagent.ok("POST", "/api/volumes/vol-3/delete", {}) == {
        "volume_id": "vol-3", "deleted": True,
    }  # fmt: skip
    assert not (tmp_path / "vols" / "vol-3").exists()
    again = vagent.ok("POST", "/api/volumes/vol-3/delete", {})
    assert again["deleted"] is False


def test_a_device_found_under_its_alias(tmp_path: Path) -> None:
    """A Nitro instance shows an EBS volume attached as /dev/sdf as an NVMe device: the agent
    takes the first path that exists, the named device first."""
    from dstack.agent.volumes import _present_device

    alias = tmp_path / "nvme-Amazon_Elastic_Block_Store_vol0abc"
    alias.write_text("")
    entry = {"name": "data", "device": "/dev/nonexistent-sdf", "device_aliases": [str(alias)]}
    assert _present_device(entry, tmp_path / "home", wait=0) == str(alias)
    entry["device_aliases"] = []
    with pytest.raises(Exception, match="is not present"):
        _present_device(entry, tmp_path / "home", wait=0)


def test_mount_points_are_read_from_the_kernel(tmp_path: Path) -> None:
    """A bind mount from the same filesystem has the same device number as its parent, which
    os.path.ismount cannot tell; the kernel's mount list can."""
    from dstack.agent.volumes import _unescape, is_mount_point

    assert is_mount_point(Path("/"))
    assert not is_mount_point(tmp_path)
    assert _unescape("/mnt/with\\040space") == "/mnt/with space"
