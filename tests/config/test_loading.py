"""`load_configuration`: file and line in every error, the YAML quirks we smooth over,
`profiles.yml`, and the import cost of the models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dstack.cli.profiles import load_profiles
from dstack.errors import ConfigurationError
from dstack.models.configurations import TaskConfiguration
from dstack.models.loading import load_configuration


def write(tmp_path: Path, text: str, name: str = "train.dstack.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        load_configuration(path)
    return info.value


def test_error_names_file_line_and_field(tmp_path):
    path = write(tmp_path, "type: task\nname: t\ncommands:\n  - x\nresources:\n  gpu: A100:40XB\n")
    error = load_error(path)
    assert str(error) == f"{path}:6: resources.gpu: unknown memory unit 'XB' in 'A100:40XB'"
    assert (error.file, error.line, error.path) == (str(path), 6, "resources.gpu")


def test_error_in_list_item_points_at_item(tmp_path):
    text = "type: task\ncommands: [x]\nvolumes:\n  - a:/a\n  - b:rel\n"
    assert load_error(write(tmp_path, text)).line == 5


def test_cross_field_error_points_at_field(tmp_path):
    text = "type: task\ncommands: [x]\nimage: python\n\npython: '3.12'\n"
    error = load_error(write(tmp_path, text))
    assert (error.line, error.path) == (5, "python")


def test_nested_group_error_line(tmp_path):
    text = "type: task\ngroups:\n  - name: a\n    commands: [x]\n  - name: a\n    commands: [y]\n"
    error = load_error(write(tmp_path, text))
    assert (error.line, error.path) == (5, "groups[1].name")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "configuration file is empty"),
        ("# only a comment\n", 1, "configuration file is empty"),
        ("- a\n- b\n", 1, "configuration must be a mapping"),
        ("just a string\n", 1, "configuration must be a mapping"),
        ("name: x\n", 1, "type: `type` is required"),
        ("name: x\ntype: flow\n", 2, "type: unknown configuration type 'flow'"),
        ("type: task\ncommands: [x\n", 3, "invalid YAML"),
        ("type: task\n  bad: indent\n", 2, "invalid YAML"),
        (
            "type: task\n---\ntype: task\n",
            2,
            "invalid YAML: expected a single document in the stream but found another document",
        ),
        ("type: task\ncommands: [x]\nfoo: 1\n", 3, "foo: Extra inputs"),
        (
            "type: task\ncommands: [x]\ncommands: [y]\n",
            3,
            "invalid YAML: duplicate key 'commands' (lines 2 and 3)",
        ),
    ],
)
def test_file_level_errors(tmp_path, text, line, message):
    error = load_error(write(tmp_path, text))
    assert error.line == line
    assert message in str(error)


def test_missing_file(tmp_path):
    error = load_error(tmp_path / "nope.dstack.yml")
    assert "cannot read file" in str(error)
    assert error.file == str(tmp_path / "nope.dstack.yml")


def test_yaml_off_and_colon_ports(tmp_path):
    text = "type: task\ncommands: [x]\nmax_duration: off\nports:\n  - 30:80\n  - 8080:80\n"
    conf = load_configuration(write(tmp_path, text))
    assert isinstance(conf, TaskConfiguration)
    assert conf.max_duration == "off"
    # YAML 1.1 would read `30:80` as the base-60 number 1880.
    assert [(p.local_port, p.container_port) for p in conf.ports] == [(30, 80), (8080, 80)]


def test_profiles_yml(tmp_path):
    path = write(
        tmp_path,
        "profiles:\n  - name: cheap\n    default: true\n    spot_policy: auto\n"
        "    max_price: 2.5\n    max_duration: 8h\n  - name: big\n    backends: [aws]\n",
        "profiles.yml",
    )
    profiles = load_profiles([tmp_path / "missing.yml", path])
    assert profiles.find(None).name == "cheap"
    assert profiles.find("cheap").max_duration == 28800
    assert profiles.find("big").backends == ["aws"]
    with pytest.raises(ConfigurationError, match="No such profile: nope"):
        profiles.find("nope")
    assert load_profiles([tmp_path / "missing.yml"]).profiles == []


def test_profiles_yml_errors_have_lines(tmp_path):
    path = write(tmp_path, "profiles:\n  - name: x\n    spot: true\n", "profiles.yml")
    with pytest.raises(ConfigurationError) as info:
        load_profiles([path])
    assert (info.value.line, info.value.path) == (3, "profiles[0].spot")


def test_import_is_light():
    code = (
        "import sys, dstack.models.configurations\n"
        "heavy = {'croniter', 'jsonschema', 'dstack.server', 'dstack.cli', 'httpx', 'rich'}\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
