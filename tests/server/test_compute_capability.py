"""`resources.gpu.compute_capability` is a minimum, checked against gpuhunt's table of NVIDIA
GPUs; a GPU whose capability is not known does not meet it."""

from __future__ import annotations

from dstack.models.instances import Gpu, Resources
from dstack.models.resources import ResourcesSpec
from dstack.server.scheduler.matching import compute_capability, mismatch


def _host(name: str, vendor: str = "nvidia") -> Resources:
    return Resources(
        cpus=8, memory_mib=65536, gpus=[Gpu(name=name, memory_mib=40960, vendor=vendor)]
    )


def _spec(cc: str) -> ResourcesSpec:
    return ResourcesSpec.model_validate(
        {"cpu": "1..", "memory": "1GB..", "gpu": {"compute_capability": cc}}
    )


def test_table_lookup() -> None:
    assert compute_capability(Gpu(name="A100", memory_mib=40960)) == (8, 0)
    assert compute_capability(Gpu(name="T4", memory_mib=16384)) == (7, 5)
    assert compute_capability(Gpu(name="MI300X", memory_mib=1, vendor="amd")) is None


def test_minimum_is_met_or_named() -> None:
    assert mismatch(_spec("8.0"), _host("A100")) is None
    assert mismatch(_spec("7.5"), _host("H100")) is None
    assert mismatch(_spec("8.0"), _host("T4")) == "gpu compute capability 8.0+ (T4 has 7.5)"
    assert mismatch(_spec("8.0"), _host("Mystery")) == (
        "gpu compute capability 8.0+ (Mystery has unknown)"
    )
