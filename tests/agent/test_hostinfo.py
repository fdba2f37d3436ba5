"""Parsing of GPU and host tool output, on captured samples."""

from __future__ import annotations

import json

import pytest

from dstack.agent.hostinfo import (
    cpu_arch,
    parse_amd_smi,
    parse_ip_addr,
    parse_meminfo,
    parse_nvidia_smi,
    parse_rocm_smi,
    short_gpu_name,
)

NVIDIA_SMI_8xH100 = "\n".join(
    f"NVIDIA H100 80GB HBM3, 81559, GPU-{i}a2b3c4d-0000-1111-2222-333344445555, 550.54.15"
    for i in range(8)
)


def test_parse_nvidia_smi_h100() -> None:
    gpus, driver = parse_nvidia_smi(NVIDIA_SMI_8xH100 + "\n")
    assert driver == "550.54.15"
    assert len(gpus) == 8
    assert gpus[0] == {
        "vendor": "nvidia",
        "name": "H100",
        "memory_mib": 81559,
        "uuid": "GPU-0a2b3c4d-0000-1111-2222-333344445555",
    }


def test_parse_nvidia_smi_tolerates_noise_and_na() -> None:
    text = "Tesla T4, 15360, [N/A], [N/A]\n\nNo devices were found\n"
    gpus, driver = parse_nvidia_smi(text)
    assert gpus == [{"vendor": "nvidia", "name": "T4", "memory_mib": 15360, "uuid": None}]
    assert driver is None
    assert parse_nvidia_smi("") == ([], None)


@pytest.mark.parametrize(
    ("full", "short"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA H100 NVL", "H100NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("Tesla T4", "T4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("NVIDIA RTX A6000", "RTXA6000"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX6000Ada"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA GH200 480GB", "GH200"),
    ],
)
def test_short_gpu_name(full: str, short: str) -> None:
    assert short_gpu_name(full) == short


def test_parse_rocm_smi() -> None:
    sample = {
        "card0": {
            "Card Series": "AMD Instinct MI300X OAM",
            "Card model": "0x74a1",
            "VRAM Total Memory (B)": "206141652992",
            "Unique ID": "0x18f68e602b8a790f",
        },
        "card1": {"Card series": "Instinct MI250X", "VRAM Total Memory (B)": "68702699520"},
        "system": {"Driver version": "6.7.0"},
    }
    gpus = parse_rocm_smi(json.dumps(sample))
    assert [(g["name"], g["memory_mib"]) for g in gpus] == [("MI300X", 196592), ("MI250X", 65520)]
    assert gpus[0]["vendor"] == "amd" and gpus[0]["uuid"] == "0x18f68e602b8a790f"


def test_parse_amd_smi() -> None:
    sample = [
        {
            "gpu": 0,
            "asic": {"market_name": "AMD Instinct MI300X", "asic_serial": "0xABC"},
            "vram": {"type": "HBM", "size": {"value": 196592, "unit": "MB"}},
        },
    ]
    assert parse_amd_smi(json.dumps(sample)) == [
        {"vendor": "amd", "name": "MI300X", "memory_mib": 196592, "uuid": "0xABC"}
    ]
    assert parse_amd_smi(json.dumps({"gpu_data": sample}))[0]["name"] == "MI300X"


def test_parse_ip_addr() -> None:
    text = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n"
        "2: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0\\  valid_lft forever\n"
        "3: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\n"
    )
    assert parse_ip_addr(text) == ["10.0.0.5", "172.17.0.1"]


def test_parse_meminfo_and_arch() -> None:
    assert parse_meminfo("MemTotal:       32768000 kB\nMemFree: 1 kB\n") == 32000
    assert cpu_arch("x86_64") == "x86" and cpu_arch("AMD64") == "x86"
    assert cpu_arch("aarch64") == "arm" and cpu_arch("arm64") == "arm"
