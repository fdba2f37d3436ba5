"""`configuration_json_schema()` accepts every example and corpus configuration."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from dstack.models.schema import configuration_json_schema
from dstack.models.yaml_lines import load_yaml

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yml"))
VALID_CASES = [
    case
    for path in sorted((Path(__file__).parent / "corpus").glob("*.yml"))
    for case in yaml.safe_load(path.read_text())
    if case["expect"] == "valid"
]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = configuration_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_is_a_discriminated_union() -> None:
    schema = configuration_json_schema()
    assert schema["discriminator"]["propertyName"] == "type"
    assert len(schema["oneOf"]) == 6
    assert json.loads(json.dumps(schema)) == schema
    schema["title"] = "changed"
    assert configuration_json_schema()["title"] == "dstack configuration"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(validator, path: Path) -> None:
    errors = [e.message for e in validator.iter_errors(load_yaml(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize("case", VALID_CASES, ids=[c["id"] for c in VALID_CASES])
def test_valid_corpus_validates(validator, case: dict) -> None:
    errors = [e.message for e in validator.iter_errors(load_yaml(case["yaml"]))]
    assert errors == []


@pytest.mark.parametrize(
    "data",
    [
        {"type": "task", "commands": ["x"], "comand": 1},
        {"type": "pipeline"},
        {"type": "service", "commands": ["x"]},
        {"type": "fleet", "nodes": 1, "placement": "spread"},
        {"type": "gateway", "backend": "aws"},
    ],
)
def test_schema_rejects_structural_errors(validator, data: dict) -> None:
    assert not validator.is_valid(data)
