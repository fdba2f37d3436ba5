"""GPU device assignment: pure parts, and a real agent with a fake `nvidia-smi`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.agent.docker import run_argv
from dstack.agent.gpus import allocate, assignment, docker_gpus_args, visible_devices_env

from .helpers import AgentProcess

HOST = [
    {"vendor": "nvidia", "name": "H100", "memory_mib": 81559, "uuid": f"GPU-{i}"} for i in range(4)
]


def test_allocate_prefers_free_devices() -> None:
    assert allocate(HOST, set(), 2) == [0, 1]
    assert allocate(HOST, {0, 1}, 2) == [2, 3]
    assert allocate(HOST, {0, 2}, 3) == [0, 1, 3]  # overbooked: share rather than refuse
    assert allocate([], set(), 2) == []


def test_assignment_and_visibility() -> None:
    assigned = assignment(HOST, [1, 3])
    assert assigned == {"vendor": "nvidia", "indices": [1, 3], "devices": ["GPU-1", "GPU-3"]}
    assert visible_devices_env(assigned) == {"CUDA_VISIBLE_DEVICES": "GPU-1,GPU-3"}
    amd = assignment([{"vendor": "amd", "uuid": None}] * 2, [1])
    assert visible_devices_env(amd) == {"ROCR_VISIBLE_DEVICES": "1"}
    assert visible_devices_env(None) == {}
    assert visible_devices_env(assignment(HOST, [])) == {"CUDA_VISIBLE_DEVICES": ""}
    assert visible_devices_env(assignment([{"vendor": "amd"}], [])) == {}


def test_docker_gpu_args() -> None:
    assigned = assignment(HOST, [2])
    assert docker_gpus_args(1, True, assigned) == ["--gpus", '"device=GPU-2"']
    assert docker_gpus_args(-1, True, assigned) == ["--gpus", "all"]
    assert docker_gpus_args(1, True, None) == ["--gpus", "all"]
    assert docker_gpus_args(1, False, assigned) == []
    assert docker_gpus_args(0, True, assigned) == []
    spec = {"id": "j", "image": "i", "commands": [], "gpus": 1}
    assert '"device=GPU-2"' in run_argv(spec, "/c", True, assigned)


FAKE_NVIDIA_SMI = """#!/bin/sh
echo "NVIDIA H100 80GB HBM3, 81559, GPU-aaaa, 550.54.15"
echo "NVIDIA H100 80GB HBM3, 81559, GPU-bbbb, 550.54.15"
"""


@pytest.fixture
def gpu_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(0o755)
    agent = AgentProcess(tmp_path / "home")
    agent.start(env_extra={"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})
    try:
        yield agent
    finally:
        agent.cleanup_jobs()
        agent.kill()


def test_jobs_get_distinct_devices(gpu_agent: AgentProcess) -> None:
    info = gpu_agent.ok("GET", "/api/host_info")
    assert [g["name"] for g in info["gpus"]] == ["H100", "H100"]
    assert info["gpu_driver"] == "550.54.15"
    flag = gpu_agent.home / "go-gpus"
    script = (
        f'echo "cvd=${{CUDA_VISIBLE_DEVICES-unset}}"; while [ ! -f {flag} ]; do sleep 0.02; done'
    )
    gpu_agent.shell("g1", script, gpus=1)
    gpu_agent.shell("g2", script, gpus=1)
    gpu_agent.shell("all", script, gpus=-1)
    gpu_agent.shell("none", script)
    seen = {j: gpu_agent.wait_output(j, "cvd=").strip() for j in ("g1", "g2", "all", "none")}
    flag.touch()
    assert {seen["g1"], seen["g2"]} == {"cvd=GPU-aaaa", "cvd=GPU-bbbb"}
    assert seen["all"] == "cvd=unset"
    assert seen["none"] == "cvd="  # gpus: 0 hides every GPU
    for job in ("g1", "g2"):
        assert gpu_agent.wait_finished(job)["status"] == "done"
    # Finished jobs free their devices.
    gpu_agent.shell("g3", "echo $CUDA_VISIBLE_DEVICES", gpus=2)
    gpu_agent.wait_finished("g3")
    assert gpu_agent.output("g3") == "GPU-aaaa,GPU-bbbb\n"
