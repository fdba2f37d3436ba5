"""The normalised JSON of a configuration (cli.md §23) parses back to the same configuration.

The server stores `model_dump(mode="json")` and reads it again, so every valid configuration
must survive the trip, with every field present (unset ones null).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from dstack.models.configurations import CONFIGURATION_TYPES, parse_configuration
from dstack.models.yaml_lines import load_yaml

HERE = Path(__file__).parent
DOCS = [
    (p.name, load_yaml(p.read_text())) for p in sorted((HERE.parents[1] / "examples").glob("*.yml"))
]
for corpus_file in sorted((HERE / "corpus").glob("*.yml")):
    DOCS += [
        (case["id"], load_yaml(case["yaml"]))
        for case in yaml.safe_load(corpus_file.read_text())
        if case["expect"] == "valid"
    ]


@pytest.mark.parametrize(("name", "data"), DOCS, ids=[n for n, _ in DOCS])
def test_json_roundtrip(name, data):
    conf = parse_configuration(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dumped = conf.model_dump(mode="json")
    assert set(dumped) == set(CONFIGURATION_TYPES[conf.type].model_fields)
    assert parse_configuration(dumped) == conf


def test_normalised_json_shape():
    conf = parse_configuration(
        {
            "type": "task",
            "commands": ["python train.py"],
            "env": ["A=1", "B"],
            "max_duration": "1h",
            "stop_duration": "off",
            "idle_duration": "off",
            "ports": ["*:6006"],
            "volumes": ["data:/data"],
            "retry": True,
            "resources": {"cpu": "x86:4..", "gpu": "A100:40GB:2", "disk": "200GB"},
        }
    ).model_dump(mode="json")
    assert conf["env"] == {"A": "1", "B": None}
    assert (conf["max_duration"], conf["stop_duration"], conf["idle_duration"]) == (3600, "off", -1)
    assert conf["ports"] == [{"local_port": None, "container_port": 6006}]
    assert conf["volumes"] == [{"name": ["data"], "path": "/data"}]
    assert conf["retry"] == {
        "on_events": ["no-capacity", "interruption", "error"],
        "duration": 3600,
    }
    assert conf["resources"]["cpu"] == {"arch": "x86", "count": {"min": 4, "max": None}}
    assert conf["resources"]["gpu"]["memory"] == {"min": 40.0, "max": 40.0}
    assert conf["resources"]["disk"] == {"size": {"min": 200.0, "max": 200.0}}
    assert conf["nodes"] == 1 and conf["priority"] is None and conf["schedule"] is None
