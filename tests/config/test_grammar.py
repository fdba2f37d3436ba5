"""Scalar grammars (§2, §3): every accepted form and the error text of rejected ones."""

from __future__ import annotations

import pytest

from dstack.models.common import parse_duration, parse_memory
from dstack.models.configurations import parse_configuration
from dstack.models.resources import ResourcesSpec, parse_gpu_string

from .helpers import dev, error_of, resources, service, task

# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30), ("30", 30), ("30s", 30), ("5m", 300), ("5 m", 300), ("1h", 3600),
     ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("1H", 3600), (0, 0)],
)  # fmt: skip
def test_duration_forms(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["1y", "1.5h", "", "h", "5m!", True, None, [1]])
def test_duration_errors(value):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1h", 3600), (60, 60), ("off", "off"), (False, "off"), (True, None), (None, None)],
)
def test_offable_durations(value, expected):
    conf = parse_configuration(task(max_duration=value, stop_duration=value))
    assert conf.max_duration == expected
    assert conf.stop_duration == expected


def test_offable_duration_rejects_negative():
    assert error_of(task(max_duration=-5)) == "max_duration: duration must not be negative: -5"


def test_offable_duration_rejects_garbage():
    assert "max_duration: invalid duration '1y'" in error_of(task(max_duration="1y"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("off", -1), (False, -1), (-1, -1), (True, None), ("30m", 1800), (-5, -5), (None, None)],
)
def test_idle_duration(value, expected):
    assert parse_configuration(task(idle_duration=value)).idle_duration == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("off", None), (False, None), (True, None), ("3h", 10800), (60, 60)]
)
def test_inactivity_duration(value, expected):
    assert parse_configuration(dev(inactivity_duration=value)).inactivity_duration == expected


def test_unset_durations_are_none():
    conf = parse_configuration(task())
    assert (conf.max_duration, conf.stop_duration, conf.idle_duration) == (None, None, None)


# --- memory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "gb"),
    [(16, 16.0), ("16", 16.0), ("16GB", 16.0), ("16gb", 16.0), ("16 GB", 16.0),
     ("512MB", 0.5), ("1TB", 1024.0), ("1.5GB", 1.5), (0.5, 0.5)],
)  # fmt: skip
def test_memory_forms(value, gb):
    assert parse_memory(value) == gb


@pytest.mark.parametrize(
    ("value", "message"),
    [("16XB", "unknown memory unit 'XB' in '16XB'"), ("16KB", "unknown memory unit 'KB'"),
     ("GB", "invalid memory size 'GB'"), (-1, "must not be negative"), (True, "invalid memory")],
)  # fmt: skip
def test_memory_errors(value, message):
    with pytest.raises(ValueError, match=message):
        parse_memory(value)


def test_shm_size():
    assert resources(shm_size="16GB").shm_size == 16.0
    assert error_of(task(resources={"shm_size": "1XB"})) == (
        "resources.shm_size: unknown memory unit 'XB' in '1XB'"
    )


# --- ranges ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [("16GB", 16, 16), ("16GB..", 16, None), ("..64GB", None, 64), ("16GB..64GB", 16, 64),
     ("16GB .. 64GB", 16, 64), (32, 32, 32), ({"min": "8GB", "max": "16GB"}, 8, 16),
     ({"min": 4}, 4, None)],
)  # fmt: skip
def test_memory_range_forms(value, low, high):
    memory = resources(memory=value).memory
    assert (memory.min, memory.max) == (low, high)


@pytest.mark.parametrize(
    ("value", "message"),
    [("..", "resources.memory: Invalid empty range"),
     ("64GB..16GB", "resources.memory: Invalid range order"),
     ("1..2..3", "resources.memory: invalid range '1..2..3'"),
     ("", "resources.memory: Invalid empty range"),
     ({"min": 1, "low": 2}, "resources.memory.low: Extra inputs are not permitted")],
)  # fmt: skip
def test_range_errors(value, message):
    assert error_of(task(resources={"memory": value})) == message


# --- cpu -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "arch", "low", "high"),
    [(4, None, 4, 4), ("4", None, 4, 4), ("4..", None, 4, None), ("..8", None, None, 8),
     ("2..8", None, 2, 8), ("arm:4", "arm", 4, 4), ("x86:8", "x86", 8, 8), ("8:x86", "x86", 8, 8),
     ("ARM:4..", "arm", 4, None), ("x86", "x86", 2, None),
     ({"arch": "arm", "count": "2.."}, "arm", 2, None),
     ({"min": 2, "max": 4}, None, 2, 4)],
)  # fmt: skip
def test_cpu_forms(value, arch, low, high):
    cpu = resources(cpu=value).cpu
    assert (cpu.arch, cpu.count.min, cpu.count.max) == (arch, low, high)


@pytest.mark.parametrize(
    ("value", "message"),
    [("risc:4", "unknown CPU architecture 'risc' in 'risc:4'"),
     ("arm:x86", "CPU spec arch conflict in 'arm:x86'"), ("4:8", "CPU spec count conflict"),
     ("arm::4", "empty token in CPU spec 'arm::4'"), ("8..2", "Invalid range order"),
     (True, "invalid CPU spec"), ("x86:2.5", "CPU spec arch conflict in 'x86:2.5'"),
     ("2.5", "unknown CPU architecture '2.5'")],
)  # fmt: skip
def test_cpu_errors(value, message):
    text = error_of(task(resources={"cpu": value}))
    assert text.startswith("resources.cpu")
    assert message in text


# --- gpu -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("A100", {"name": ["A100"]}),
        (
            "A100:40GB:2",
            {"name": ["A100"], "memory": {"min": 40.0, "max": 40.0}, "count": {"min": 2, "max": 2}},
        ),
        ("24GB..", {"memory": {"min": 24.0, "max": None}}),
        ("80GB", {"memory": {"min": 80.0, "max": 80.0}}),
        ("H100:8", {"name": ["H100"], "count": {"min": 8, "max": 8}}),
        ("1..2", {"count": {"min": 1, "max": 2}}),
        ("nvidia:2", {"vendor": "nvidia", "count": {"min": 2, "max": 2}}),
        ("amd:MI300X:8", {"vendor": "amd", "name": ["MI300X"], "count": {"min": 8, "max": 8}}),
        ("16GB..24GB:1..2", {"memory": {"min": 16.0, "max": 24.0}, "count": {"min": 1, "max": 2}}),
        ("A10G,A100", {"name": ["A10G", "A100"]}),
        ("tpu:v5litepod-8", {"vendor": "google", "name": ["v5litepod-8"]}),
        ("google:v5p-8", {"vendor": "google", "name": ["v5p-8"]}),
        ("tt:32", {"vendor": "tenstorrent", "count": {"min": 32, "max": 32}}),
        ("intel:Gaudi2:8", {"vendor": "intel", "name": ["Gaudi2"], "count": {"min": 8, "max": 8}}),
        ("0", {"count": {"min": 0, "max": 0}}),
        (
            "A100:1..2:80GB",
            {"name": ["A100"], "count": {"min": 1, "max": 2}, "memory": {"min": 80.0, "max": 80.0}},
        ),
        ("8:H100", {"name": ["H100"], "count": {"min": 8, "max": 8}}),
        ("512MB..", {"memory": {"min": 0.5, "max": None}}),
    ],
)
def test_gpu_shorthand(spec, expected):
    gpu = resources(gpu=spec).gpu.model_dump(mode="json")
    full = {"vendor": None, "name": None, "count": {"min": 1, "max": None}, "memory": None,
            "total_memory": None, "compute_capability": None, **expected}  # fmt: skip
    assert gpu == full


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("A100:40XB", "resources.gpu: unknown memory unit 'XB' in 'A100:40XB'"),
        ("A100:H100", "resources.gpu: GPU spec name conflict in 'A100:H100'"),
        ("nvidia:amd", "resources.gpu: GPU spec vendor conflict in 'nvidia:amd'"),
        ("24GB:80GB", "resources.gpu: GPU spec memory conflict in '24GB:80GB'"),
        ("1:2", "resources.gpu: GPU spec count conflict in '1:2'"),
        ("A100::2", "resources.gpu: empty token in GPU spec 'A100::2'"),
        ("A100:", "resources.gpu: empty token in GPU spec 'A100:'"),
        ("A100,:2", "resources.gpu: empty GPU name in 'A100,:2'"),
        ("A100:2.5", "resources.gpu: invalid count '2.5' in 'A100:2.5'"),
        ("A100:4..2", "resources.gpu.count: Invalid range order"),
        ("..", "resources.gpu: Invalid empty range"),
        ("80GB..40GB", "resources.gpu.memory: Invalid range order"),
    ],
)
def test_gpu_shorthand_errors(spec, message):
    assert error_of(task(resources={"gpu": spec})) == message


def test_gpu_int_and_defaults():
    assert resources(gpu=2).gpu.count.model_dump() == {"min": 2, "max": 2}
    assert resources(gpu=0).gpu.count.model_dump() == {"min": 0, "max": 0}
    assert resources().gpu.count.model_dump() == {"min": 0, "max": None}


def test_gpu_mapping_form():
    gpu = resources(
        gpu={"vendor": "NVIDIA", "name": "H100", "memory": "80GB..", "count": "2..8",
             "total_memory": "320GB..", "compute_capability": "9.0"}
    ).gpu  # fmt: skip
    assert gpu.vendor == "nvidia"
    assert gpu.name == ["H100"]
    assert (gpu.memory.min, gpu.count.min, gpu.count.max) == (80.0, 2, 8)
    assert gpu.total_memory.min == 320.0
    assert gpu.compute_capability == (9, 0)
    assert resources(gpu={"name": ["A100", "H100"]}).gpu.count.min == 1
    assert resources(gpu={"vendor": "tpu", "name": "tpu-v5p-8"}).gpu.name == ["v5p-8"]
    assert resources(gpu={"vendor": "tt"}).gpu.vendor == "tenstorrent"


@pytest.mark.parametrize(("value", "cc"), [(7.5, (7, 5)), ("8.6", (8, 6)), ([9, 0], (9, 0))])
def test_compute_capability_forms(value, cc):
    assert resources(gpu={"compute_capability": value}).gpu.compute_capability == cc


@pytest.mark.parametrize(
    ("gpu", "message"),
    [({"vendor": "ati"}, "resources.gpu.vendor: Input should be 'nvidia', 'amd'"),
     ({"compute_capability": "seven"}, "invalid compute capability 'seven'"),
     ({"count": -1}, "count must not be negative"), ({"name": []}, "must not be empty"),
     ({"size": 2}, "resources.gpu.size: Extra inputs are not permitted"),
     (True, "resources.gpu: invalid GPU spec")],
)  # fmt: skip
def test_gpu_mapping_errors(gpu, message):
    assert message in error_of(task(resources={"gpu": gpu}))


def test_gpu_spec_parser_is_reusable():
    assert parse_gpu_string("H100:80GB:8") == {
        "name": ["H100"], "memory": {"min": 80.0, "max": 80.0}, "count": {"min": 8, "max": 8}
    }  # fmt: skip


# --- disk and rendering ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [("200GB", 200, 200), ("100GB..", 100, None), ({"size": "1TB.."}, 1024, None),
     ({"min": 50}, 50, None), (500, 500, 500)],
)  # fmt: skip
def test_disk_forms(value, low, high):
    disk = resources(disk=value).disk
    assert (disk.size.min, disk.size.max) == (low, high)


def test_resource_defaults_and_json():
    assert ResourcesSpec().model_dump(mode="json") == {
        "cpu": {"arch": None, "count": {"min": 2, "max": None}},
        "memory": {"min": 8.0, "max": None},
        "shm_size": None,
        "gpu": {"vendor": None, "name": None, "count": {"min": 0, "max": None}, "memory": None,
                "total_memory": None, "compute_capability": None},
        "disk": {"size": {"min": 100.0, "max": None}},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "rendered"),
    [
        ({}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=0.."),
        ({"cpu": "x86:2..", "gpu": "A100:40GB:2"},
         "cpu=x86:2.. mem=8GB.. disk=100GB.. gpu=A100:40GB:2"),
        ({"gpu": 0}, "cpu=2.. mem=8GB.. disk=100GB.. gpu=0"),
        ({"gpu": "nvidia:24GB..:1", "memory": "32GB..64GB"},
         "cpu=2.. mem=32GB..64GB disk=100GB.. gpu=nvidia:24GB..:1"),
        ({"gpu": {"name": "H100", "count": 8, "total_memory": "640GB", "compute_capability": 9.0}},
         "cpu=2.. mem=8GB.. disk=100GB.. gpu=H100:8:640GB:9.0"),
        ({"memory": "512MB.."}, "cpu=2.. mem=0.5GB.. disk=100GB.. gpu=0.."),
    ],
)  # fmt: skip
def test_requirement_rendering(fields, rendered):
    assert resources(**fields).pretty() == rendered


def test_rendering_without_disk():
    spec = ResourcesSpec.model_validate({"cpu": "1..", "memory": "0GB..", "disk": None})
    assert spec.pretty() == "cpu=1.. mem=0GB.. gpu=0.."


# --- ports -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "local", "container"),
    [(8501, 8501, 8501), ("8501", 8501, 8501), ("8080:80", 8080, 80), ("*:8080", None, 8080),
     ({"container_port": 80}, None, 80)],
)  # fmt: skip
def test_port_forms(value, local, container):
    port = parse_configuration(task(ports=[value])).ports[0]
    assert (port.local_port, port.container_port) == (local, container)


@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "ports[0]: port must be between 1 and 65535: 0"), (70000, "between 1 and 65535"),
     ("abc", "ports[0]: invalid port 'abc'"), ("80:", "invalid port '80:'"),
     ("a:80", "invalid port 'a:80'"), (True, "invalid port mapping"), ("1:2:3", "invalid port")],
)  # fmt: skip
def test_port_errors(value, message):
    assert message in error_of(task(ports=[value]))


def test_service_port():
    conf = parse_configuration(service(port="8080:80"))
    assert conf.port.container_port == 80
    assert "port: Field required" in error_of({"type": "service", "commands": ["x"]})


# --- env -------------------------------------------------------------------------------------


def test_env_list_form():
    conf = parse_configuration(task(env=["A=1", "B=", "C", "D=x=y", "E=${{ secrets.token }}"]))
    assert conf.env == {"A": "1", "B": "", "C": None, "D": "x=y", "E": "${{ secrets.token }}"}


def test_env_mapping_form_coerces_scalars():
    env = {"PORT": 8080, "RATE": 0.5, "ON": True, "S": "s", "N": None}
    conf = parse_configuration(task(env=env))
    assert conf.env == {"PORT": "8080", "RATE": "0.5", "ON": "true", "S": "s", "N": None}


@pytest.mark.parametrize(
    ("env", "message"),
    [(["A=1", "A=2"], "env: duplicate environment variable 'A'"),
     (["1A=x"], "env: invalid environment variable name '1A'"),
     ({"BAD-KEY": "x"}, "invalid environment variable name 'BAD-KEY'"),
     ([1], "env list entries must be KEY=VALUE strings"),
     ("A=1", "env must be a list of KEY=VALUE strings or a mapping"),
     ({"A": [1]}, "must be a string"),
     (["A=${{ secrets.x"], "A: unterminated interpolation"),
     (["A=${{ env.HOME }}"], "A: unsupported interpolation '${{ env.HOME }}'"),
     (["A=${{ groups[0].nodes[0].IP_ADDRESS }}"], "group IP references are not allowed in env")],
)  # fmt: skip
def test_env_errors(env, message):
    assert message in error_of(task(env=env))


def test_env_dollar_escape():
    assert parse_configuration(task(env=["A=$${{ not.interpolated"])).env["A"].startswith("$$")


# --- volumes ---------------------------------------------------------------------------------


def test_volume_forms():
    volumes = parse_configuration(
        task(volumes=["data:/data", "/mnt/cache:/root/.cache/:ro",
                      {"name": ["a", "b"], "path": "/x"},
                      {"instance_path": "/srv", "path": "/srv", "optional": True},
                      {"name": "ckpt-${{ dstack.node_rank }}", "path": "/ckpt"}])
    ).volumes  # fmt: skip
    dumped = [v.model_dump() for v in volumes]
    assert dumped == [
        {"name": ["data"], "path": "/data"},
        {"instance_path": "/mnt/cache", "path": "/root/.cache", "optional": False,
         "read_only": True},
        {"name": ["a", "b"], "path": "/x"},
        {"instance_path": "/srv", "path": "/srv", "optional": True, "read_only": False},
        {"name": ["ckpt-${{ dstack.node_rank }}"], "path": "/ckpt"},
    ]


@pytest.mark.parametrize(
    ("volume", "message"),
    [("data:rel", "volumes[0].path: path must be absolute: 'rel'"),
     ("data:/a/../b", "volumes[0].path: path must not contain '..'"),
     ("data", "volumes[0]: invalid volume 'data'"),
     ({"name": "x"}, "volumes[0].path: Field required"),
     ({"instance_path": "rel/x", "path": "/x"}, "volumes[0].instance_path: path must be absolute"),
     ({"name": [], "path": "/x"}, "volume name list must not be empty"),
     ("data:/x:ro", "a network volume takes no mode")],
)  # fmt: skip
def test_volume_errors(volume, message):
    assert message in error_of(task(volumes=[volume]))


# --- repos and files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(".", {"local_path": "."}),
     ("..:/workspace/repo", {"local_path": "..", "path": "/workspace/repo"}),
     ("https://github.com/org/repo.git", {"url": "https://github.com/org/repo.git"}),
     ("https://github.com/org/repo.git:/repo", {"url": "https://github.com/org/repo.git",
                                                 "path": "/repo"}),
     ("https://git.example.com:8443/org/repo:/r", {"url": "https://git.example.com:8443/org/repo",
                                                   "path": "/r"}),
     ("git@github.com:org/repo.git", {"url": "git@github.com:org/repo.git"}),
     ("git@github.com:org/repo.git:~/repo",
      {"url": "git@github.com:org/repo.git", "path": "~/repo"}),
     ("C:\\src\\proj:/w", {"local_path": "C:\\src\\proj", "path": "/w"})],
)  # fmt: skip
def test_repo_shorthand(spec, expected):
    repo = parse_configuration(task(repos=[spec])).repos[0]
    full = {"local_path": None, "url": None, "branch": None, "hash": None, "path": ".",
            "if_exists": "error", **expected}  # fmt: skip
    assert repo.model_dump() == full


@pytest.mark.parametrize(
    ("repos", "message"),
    [([".", ".."], "repos: at most one repo is supported"),
     ([{"local_path": ".", "url": "https://x/y"}], "needs exactly one of `local_path` and `url`"),
     ([{"branch": "main"}], "needs exactly one of `local_path` and `url`"),
     ([{"local_path": ".", "path": "~bob/x"}], "repos[0].path: repo path must not use the ~user"),
     ([{"local_path": ".", "if_exists": "overwrite"}], "repos[0].if_exists: Input should be")],
)  # fmt: skip
def test_repo_errors(repos, message):
    assert message in error_of(task(repos=repos))


@pytest.mark.parametrize(
    ("spec", "local", "path"),
    [("./configs:/workspace/configs", "./configs", "/workspace/configs"),
     ("~/.ssh/id_rsa", "~/.ssh/id_rsa", "~/.ssh/id_rsa"), ("data.csv:input/", "data.csv", "input/"),
     ({"local_path": "a", "path": "/b"}, "a", "/b"), ({"local_path": "a"}, "a", "a"),
     ("C:\\data:/data", "C:\\data", "/data")],
)  # fmt: skip
def test_files_forms(spec, local, path):
    mapping = parse_configuration(task(files=[spec])).files[0]
    assert (mapping.local_path, mapping.path) == (local, path)


def test_files_reject_windows_container_path():
    assert "files[0].path: container path must be a POSIX path" in error_of(
        task(files=["data:C:\\data"])
    )


# --- misc scalars ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(3.12, "3.12"), ("3.9", "3.9"), (3.1, "3.10"), ("3.15", "3.15"), (3.11, "3.11")],
)
def test_python_versions(value, text):
    assert parse_configuration(task(python=value)).python == text


@pytest.mark.parametrize("value", ["3.8", "2.7", 3.16, "3", True])
def test_python_version_errors(value):
    assert error_of(task(python=value)).startswith("python: ")


@pytest.mark.parametrize("user", ["root", "1000", "1000:1000", "app:staff", "ubuntu:100"])
def test_user_forms(user):
    assert parse_configuration(task(user=user)).user == user


@pytest.mark.parametrize(
    ("user", "message"),
    [("a:b:c", "invalid user 'a:b:c': expected user[:group]"), (":g", "expected user[:group]"),
     ("u:", "expected user[:group]"), ("-1", "ids must not be negative"),
     ("app:-5", "ids must not be negative")],
)  # fmt: skip
def test_user_errors(user, message):
    text = error_of(task(user=user))
    assert text.startswith(f"user: invalid user '{user}'")
    assert message in text


@pytest.mark.parametrize("shell", ["sh", "bash", "/bin/zsh"])
def test_shells(shell):
    assert parse_configuration(task(shell=shell)).shell == shell


def test_shell_error():
    assert error_of(task(shell="zsh")) == (
        "shell: unsupported shell 'zsh': use sh, bash or an absolute path"
    )


@pytest.mark.parametrize(
    ("tags", "message"),
    [({"bad key": "x"}, "tags: invalid tag key 'bad key'"),
     ({"k": "x" * 257}, "tags: invalid value for tag 'k'"),
     ({"k": "semi;colon"}, "invalid value for tag 'k'")],
)  # fmt: skip
def test_tag_errors(tags, message):
    assert message in error_of(task(tags=tags))


def test_tags_valid_and_coerced():
    assert parse_configuration(task(tags={"team": "ml", "cost-center": 42})).tags == {
        "team": "ml", "cost-center": "42"
    }  # fmt: skip


def test_numbers_coerced_to_strings():
    conf = parse_configuration(task(name=123, image=1, commands=[1, "x"], regions=[1]))
    assert (conf.name, conf.image, conf.commands, conf.regions) == ("123", "1", ["1", "x"], ["1"])
