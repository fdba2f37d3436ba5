"""The user guide's complete configuration examples parse as written (they are what users copy
first), and the two that stretch the reference's rules do what the guide means: a volume sized
with `resources.disk`, and a service with `scaling` and the default single replica."""

from __future__ import annotations

import pytest
import yaml

from dstack.errors import ConfigurationError
from dstack.models.configurations import parse_configuration
from dstack.models.services import scaling_has_no_effect

DEV = """
type: dev-environment
python: "3.11"
ide: vscode

resources:
  gpu: 80GB
  disk: 500GB
"""

TASK = """
type: task
python: "3.11"
env:
  - HUGGING_FACE_HUB_TOKEN
commands:
  - pip install -r requirements.txt
  - python train.py
ports:
  - 8501  # Optional: expose ports for web apps

resources:
  gpu: A100:40GB:2  # Two 40GB A100s
  disk: 200GB
"""

SERVICE = """
type: service
python: "3.11"
env:
  - HF_TOKEN
commands:
  - pip install vllm
  - vllm serve meta-llama/Meta-Llama-3.1-8B-Instruct
port: 8000
model: meta-llama/Meta-Llama-3.1-8B-Instruct

resources:
  gpu: 80GB
  disk: 200GB

scaling:
  metric: rps
  target: 10
"""

VOLUME = """
type: volume
name: my-volume

backend: aws
region: us-east-1

resources:
  disk: 500GB
"""


@pytest.mark.parametrize("text", [DEV, TASK, SERVICE, VOLUME], ids=["dev", "task", "svc", "vol"])
def test_guide_examples_parse(text: str) -> None:
    parse_configuration(yaml.safe_load(text))


def test_volume_disk_is_its_size() -> None:
    assert parse_configuration(yaml.safe_load(VOLUME)).size == 500
    for bad, message in [
        ({"disk": "100GB..500GB"}, "`resources.disk` of a volume is one size"),
        ({"disk": "500GB", "gpu": 1}, "a volume takes only `resources: {disk: SIZE}`"),
    ]:
        data = {**yaml.safe_load(VOLUME), "resources": bad}
        with pytest.raises(ConfigurationError, match="resources: " + message.replace("(", r"\(")):
            parse_configuration(data)
    with pytest.raises(ConfigurationError, match="give the size once"):
        parse_configuration({**yaml.safe_load(VOLUME), "size": "1GB"})


def test_scaling_with_one_replica_is_accepted_and_flagged() -> None:
    conf = parse_configuration(yaml.safe_load(SERVICE)).model_dump(mode="json")
    assert scaling_has_no_effect(conf)
    again = parse_configuration(conf)  # what the server parses from the run spec
    assert again.scaling is not None
    ranged = {**yaml.safe_load(SERVICE), "replicas": "1..4"}
    assert not scaling_has_no_effect(parse_configuration(ranged).model_dump(mode="json"))
    with pytest.raises(ConfigurationError, match="requires `replicas` to be a range"):
        parse_configuration({**yaml.safe_load(SERVICE), "replicas": 2})


@pytest.mark.parametrize("text", [DEV, TASK, SERVICE, VOLUME], ids=["dev", "task", "svc", "vol"])
def test_guide_examples_match_the_json_schema(text: str) -> None:
    import jsonschema

    from dstack.models.schema import configuration_json_schema

    validator = jsonschema.Draft202012Validator(configuration_json_schema())
    assert [e.message for e in validator.iter_errors(yaml.safe_load(text))] == []
